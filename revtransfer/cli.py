"""The ``revtransfer`` command. Thin: it parses arguments and calls into the packages.

Subcommands are imported only when they run, so ``revtransfer gen`` never pays for torch or
detectron2 and ``revtransfer --help`` is instant.
"""
from __future__ import annotations

import importlib

import click

# name -> ("module:attribute" of a click command, one-line help shown by `revtransfer --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "gen": ("clevr_gen.cli:gen", "Generate a CLEVR-style dataset with exact P(X), P(Y), Corr(X, Y)."),
    "pretrain": ("revtransfer.train.cli:pretrain", "Pretrain a ViT / RevViT on a clevr_gen dataset."),
    "probe": ("probes.cli:probe", "Linear probe on frozen features of a pretrained backbone."),
    "sweep": ("probes.cli:sweep", "Run a resumable pretrain -> probe sweep from a YAML file."),
    "detect": ("detection.cli:detect", "Frozen-backbone ViTDet (Mask R-CNN) with detectron2."),
    "bench": ("revtransfer.bench.cli:bench", "Throughput and memory per backward mode and batch size."),
    "bench-reconstruction": ("revtransfer.bench.cli:bench_reconstruction",
                             "Input-reconstruction error of a reversible stack vs depth."),
    "report": ("revtransfer.report.cli:report", "Tables and plots from results, bench JSON and datasets."),
    "demo": ("revtransfer.demo:demo", "The whole study in miniature on a CPU (what `make demo` runs)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        module, attr = SUBCOMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in SUBCOMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="revtransfer")
def main():
    """revtransfer: reversible transformers (RevViT, PaReprop) and feature-transfer studies."""


if __name__ == "__main__":
    main()
