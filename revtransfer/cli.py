"""The ``revtransfer`` command: the library's own commands plus those that installed packages
contribute through the ``revtransfer.commands`` entry-point group, as pytest, flask or datasette find
their plugins. A package adds a subcommand with, in its pyproject.toml::

    [project.entry-points."revtransfer.commands"]
    mycommand = "mypackage.cli:mycommand"      # a click command or group

The library names no app: this project's own apps (the dataset generator, the study, the
detectron2 plugin) register their subcommands the same way, in this repository's pyproject.toml.
A command's module is imported only when the command runs or ``--help`` lists it, so ``revtransfer gen`` never pays for torch or
detectron2 (the command modules themselves import their heavy code inside the command).
"""
from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

import click

from revtransfer.errors import is_expected, one_line

ENTRY_POINT_GROUP = "revtransfer.commands"

# The library's own commands: name -> ("module:attribute" of a click command, its one-line help,
# shown by `revtransfer --help` without importing the command's module, which may import torch).
LIBRARY_COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("revtransfer.train.cli:pretrain", "Pretrain a ViT / RevViT on a clevr_gen dataset."),
    "bench": ("revtransfer.bench.cli:bench", "Throughput and memory per backward mode and batch size."),
    "bench-reconstruction": ("revtransfer.bench.cli:bench_reconstruction",
                             "Input-reconstruction error of a reversible stack vs depth."),
    "report": ("revtransfer.report.cli:report", "Tables and plots from results, bench JSON and datasets."),
}


def plugin_commands() -> dict[str, str]:
    """Subcommands that installed packages register: name -> "module:attribute" (the library's own
    names win over a plugin's)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {name: target for name, target in sorted(found.items()) if name not in LIBRARY_COMMANDS}


def _load(target: str) -> click.Command:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class PluginGroup(click.Group):
    """Library commands + entry-point commands, loaded on use; expected failures as one line."""

    def _targets(self) -> dict[str, str]:
        if not hasattr(self, "_all_targets"):
            self._all_targets = {**{k: v[0] for k, v in LIBRARY_COMMANDS.items()}, **plugin_commands()}
        return self._all_targets

    def list_commands(self, ctx):
        return sorted(self._targets())

    def get_command(self, ctx, name):
        target = self._targets().get(name)
        return _load(target) if target else None

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
        """The library's commands by their fixed help; a plugin's from its command (which its
        package keeps cheap to import)."""
        rows = []
        for name in self.list_commands(ctx):
            if name in LIBRARY_COMMANDS:
                rows.append((name, LIBRARY_COMMANDS[name][1]))
            else:
                rows.append((name, self.get_command(ctx, name).get_short_help_str(limit=200)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="revtransfer")
@click.option("--debug", is_flag=True, envvar="REVTRANSFER_DEBUG",
              help="Show the traceback of an error (also: REVTRANSFER_DEBUG=1).")
def main(debug):
    """revtransfer: reversible transformers (RevViT, PaReprop) and feature-transfer studies."""


if __name__ == "__main__":
    main()
