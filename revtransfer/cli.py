"""The ``revtransfer`` command. Thin: it parses arguments and calls into the packages.

Subcommands are imported only when they run, so ``revtransfer gen`` never pays for torch or
detectron2 and ``revtransfer --help`` is instant.
"""
from __future__ import annotations

import importlib
import sys

import click

from revtransfer.errors import is_expected, one_line

# name -> ("module:attribute" of a click command, one-line help shown by `revtransfer --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "gen": ("clevr_gen.cli:gen", "Generate a CLEVR-style dataset with exact P(X), P(Y), Corr(X, Y)."),
    "pretrain": ("revtransfer.train.cli:pretrain", "Pretrain a ViT / RevViT on a clevr_gen dataset."),
    "probe": ("probes.cli:probe", "Linear probe on frozen features of a pretrained backbone."),
    "sweep": ("probes.cli:sweep", "Run a resumable pretrain -> probe sweep from a YAML file."),
    "ladder": ("probes.ladder:ladder", "Pretraining accuracy on X vs samples and time per model size (protocol choice)."),
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

    def invoke(self, ctx):
        """Expected failures as one ``Error:`` line and exit status 1 (see revtransfer.errors)."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:  # noqa: BLE001 — reported below, re-raised under --debug
            if ctx.params.get("debug"):
                raise
            if is_expected(err):
                click.echo(f"Error: {one_line(err)}", err=True)
            else:
                click.echo(f"Error: internal error ({type(err).__name__}: {one_line(err)}); re-run with "
                           "`revtransfer --debug ...` for the traceback and please report it", err=True)
            sys.exit(1)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in SUBCOMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="revtransfer")
@click.option("--debug", is_flag=True, envvar="REVTRANSFER_DEBUG",
              help="Show the traceback of an error (also: REVTRANSFER_DEBUG=1).")
def main(debug):
    """revtransfer: reversible transformers (RevViT, PaReprop) and feature-transfer studies."""


if __name__ == "__main__":
    main()
