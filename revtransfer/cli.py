"""The ``revtransfer`` command. Thin: it parses arguments and calls into the packages.

Subcommands are imported lazily so that, e.g., ``revtransfer gen`` never pays for importing torch
or detectron2.
"""
from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command; imported only when that subcommand runs.
SUBCOMMANDS: dict[str, str] = {
    "gen": "clevr_gen.cli:gen",
    "pretrain": "revtransfer.train.cli:pretrain",
    "probe": "probes.cli:probe",
    "sweep": "probes.cli:sweep",
    "detect": "detection.cli:detect",
    "bench": "revtransfer.bench.cli:bench",
    "bench-reconstruction": "revtransfer.bench.cli:bench_reconstruction",
    "demo": "revtransfer.demo:demo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="revtransfer")
def main():
    """revtransfer: reversible transformers (RevViT, PaReprop) and feature-transfer studies."""


if __name__ == "__main__":
    main()
