"""The ``revtransfer`` command is the library's commands plus those installed packages register in
the ``revtransfer.commands`` entry-point group; the library names none of the apps' commands."""
from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import click
from click.testing import CliRunner

from revtransfer import cli

# What `revtransfer --help` listed before the commands became plugins (the same set, still), and the
# detection ladder added since.
EXPECTED = {"gen", "pretrain", "probe", "sweep", "ladder", "detect", "bench", "bench-reconstruction", "report", "demo",
            "detect-ladder", "detect-study"}


def test_the_command_lists_the_library_commands_and_the_installed_plugins():
    assert set(cli.main.list_commands(None)) == EXPECTED
    assert set(cli.plugin_commands()) == EXPECTED - set(cli.LIBRARY_COMMANDS)
    for name in EXPECTED:
        assert isinstance(cli.main.get_command(None, name), click.Command), name
    out = CliRunner().invoke(cli.main, ["--help"]).output
    assert all(f"  {name} " in out for name in EXPECTED)


def test_a_package_adds_a_subcommand_through_the_entry_point_group(monkeypatch):
    import importlib.metadata as md

    real = md.entry_points
    extra = EntryPoint(name="hello", value="tests.plugin_example:hello", group=cli.ENTRY_POINT_GROUP)

    def fake(**kw):
        found = list(real(**kw))
        return found + [extra] if kw.get("group") == cli.ENTRY_POINT_GROUP else found

    monkeypatch.setattr(cli, "entry_points", fake)
    # A fresh group (the command table is read once per group), as a new process would build it.
    runner_main = cli.PluginGroup(name="revtransfer", params=cli.main.params, callback=cli.main.callback)
    assert "hello" in runner_main.list_commands(None) and "hello" not in cli.main.list_commands(None)
    res = CliRunner().invoke(runner_main, ["hello", "--name", "you"])
    assert res.exit_code == 0 and res.output == "hello you\n"
    res = CliRunner().invoke(runner_main, ["hello", "--name", "bad"])  # a plugin's ValueError: one line
    assert res.exit_code == 1 and res.output.strip() == "Error: name='bad' is not allowed"


def test_gen_help_imports_no_torch_and_the_help_lists_without_heavy_imports():
    code = ("import sys; from click.testing import CliRunner; from revtransfer.cli import main; "
            "r = CliRunner().invoke(main, {args}); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'detectron2', 'pandas') if m in sys.modules))")
    for args in (["gen", "--help"], ["--help"]):
        out = subprocess.run([sys.executable, "-c", code.format(args=args)], capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == "[]", (args, out.stdout, out.stderr)


def test_detect_help_prints_no_warning():
    out = subprocess.run([sys.executable, "-m", "revtransfer.cli", "detect", "--help"], capture_output=True,
                         text=True, check=True)
    assert "Warning" not in out.stderr and out.stderr.strip() == "", out.stderr
    assert "Frozen-backbone detection" in out.stdout


def test_the_backprop_choices_of_the_cli_are_the_engines():
    from revtransfer.reversible import BACKPROP_MODES

    option = next(p for p in cli.main.get_command(None, "pretrain").params if p.name == "backprop")
    assert tuple(option.type.choices) == tuple(BACKPROP_MODES)
