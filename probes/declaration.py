"""A study's declaration on disk: ``OUT/declaration.json``, written before any cell of a sweep runs.

The record (read by ``revtransfer report`` through ``revtransfer.report.claims``)::

    {"format": 1, "sweep": NAME, "sweep_file": PATH, "digest": D,
     "claims": {primary, secondary, exploratory, alpha, sesoi, max_seeds, spending, allocation, ...},
     "claims_digest": ..., "probe": {the probe settings that decide its numbers}, "probe_digest": ...,
     "declared_at": UTC time, "git_commit": ..., "rows_at_declaration": finished rows of the sweep then,
     "seen_before": TEXT, "note": TEXT,
     "history": [{the replaced declaration's digest, claims, probe, declared_at, git_commit,
                  rows_at_declaration, "replaced_at", "rows_then", "changes": ["key: old -> new", ...]}]}

The digest D covers the claims (less their free text) and the probe settings, and every row the
sweep writes carries it (column ``declaration``). A sweep whose declaration differs from the
record is refused once the table holds finished rows of it, unless ``redeclare`` (``--redeclare``):
then the old record moves to ``history`` with what changed and how many rows existed, and the
report says so. Before any row exists a change simply replaces the record (also kept in history).
"""
from __future__ import annotations

from revtransfer.atomic import atomic_write_json
from revtransfer.report.claims import DECLARATION_FILE, describe_changes, read_json
from revtransfer.results import ResultsTable

_KEPT = ("digest", "claims", "probe", "declared_at", "git_commit", "rows_at_declaration")


class DeclarationChanged(ValueError):
    """The sweep file's declaration differs from the recorded one after rows exist."""


def _shown(path) -> str | None:
    """A sweep file's path as a reader can follow it: relative to the working directory when inside it."""
    from pathlib import Path

    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def finished_rows(spec) -> int:
    t = ResultsTable(spec.out).read()
    if not len(t):
        return 0
    return int(((t["sweep"] == spec.name) & (t["status"] == "ok")).sum())


def declaration_path(spec):
    return spec.out / DECLARATION_FILE


def current(spec) -> dict:
    """The declaration the sweep file makes now (without time, commit or row count)."""
    return {"claims": spec.claims.hashed(), "probe": spec.probe.record()}


def ensure_declaration(spec, redeclare: bool = False) -> dict:
    """The sweep's declaration record, written (atomically) when there is none, or when the sweep
    file's differs: refused with one line naming the change when finished rows exist, unless
    ``redeclare``. Free text (seen_before, note) is updated in place."""
    from revtransfer.provenance import git_commit, utc_now

    path = declaration_path(spec)
    old = read_json(path)
    digest = spec.declaration_digest()
    text = {"seen_before": spec.claims.seen_before, "note": spec.claims.note}
    if old and old.get("digest") == digest:
        if any(old.get(k, "") != v for k, v in text.items()):
            old.update(text)
            atomic_write_json(path, old)
        return old
    rows = finished_rows(spec)
    history = list((old or {}).get("history") or [])
    if old:
        changes = describe_changes({"claims": old.get("claims", {}), "probe": old.get("probe", {})}, current(spec))
        if rows and not redeclare:
            raise DeclarationChanged(
                f"sweep {spec.name}: the declaration in {path} was made at {old.get('declared_at')} and {rows} "
                f"finished row(s) exist; the sweep file now changes {'; '.join(changes) or 'it'}: refused "
                f"(re-run with --redeclare to record the change; the report will say so)")
        history.append({**{k: old.get(k) for k in _KEPT}, "replaced_at": utc_now(), "rows_then": rows,
                        "changes": changes, "forced": bool(rows)})
    record = {"format": 1, "sweep": spec.name, "sweep_file": _shown(spec.source),
              "digest": digest, **current(spec), "claims_digest": spec.claims.digest(),
              "probe_digest": spec.probe.digest(), "declared_at": utc_now(), "git_commit": git_commit(),
              "rows_at_declaration": rows, **text, "history": history}
    atomic_write_json(path, record)
    return record
