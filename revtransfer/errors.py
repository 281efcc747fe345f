"""Failures a user causes and can fix, and how the command line reports them.

Every expected failure of ``revtransfer`` prints one line, ``Error: <what is wrong and what is
allowed>``, and exits with status 1; the traceback is shown only with ``revtransfer --debug ...``
(or ``REVTRANSFER_DEBUG=1``). Writers never leave half-made output (``revtransfer.atomic``), so
the user fixes the input and runs the same command again.

Expected failures are our error classes (which mix in :class:`UserError`), ``ValueError`` (bad
values, refused configs, corrupt data: most of ours derive from it) and ``OSError`` (missing or
unreadable files). Anything else is reported the same way but labelled an internal error: that is
a bug to report, with the ``--debug`` traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Mixed into an error class whose message tells the user what to change."""


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used as given (a clevr_gen dir, a COCO json, an images.npy); the
    message names the directory or file and what is wrong. The one dataset error of every package."""


def is_expected(err: BaseException) -> bool:
    import yaml  # torch-free and already imported by every command that reads YAML

    return isinstance(err, (UserError, ValueError, OSError, yaml.YAMLError))


def one_line(err: BaseException) -> str:
    """The error's message on one line (some libraries' messages span several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


def yaml_problem(err: Exception) -> str:
    """A YAML error as "line L, column C: problem" (PyYAML's own text quotes the document)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or one_line(err)
    context = getattr(err, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (f"{context}: {problem}" if context else problem)
