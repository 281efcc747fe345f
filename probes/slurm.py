"""Sweep cells as a SLURM job array: ``revtransfer sweep FILE --launcher slurm [--wait]``.

Each pending cell becomes one task of a job array (``probes.jobs:sweep_cell_task``: ``run_sweep``
restricted to that cell, so the cell's lock, resume and failure row are the local ones). The job's id goes to the
cell's run dir (``slurm_job.json``), its submitit files and logs to ``OUT/slurm/<submission>/``.
A later ``sweep`` or ``sweep --status`` reads those records: a cell whose job is queued or running
is not submitted again, and a job that ended without a result (cancelled, killed, out of memory or
time) is recorded once as a failed cell with its log's last lines, so that the next ``sweep`` runs it
again (resuming from its checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from revtransfer.launch.jobs import EntryPointJob
from revtransfer.launch.slurm import (
    JobRecord,
    SlurmOptions,
    check_slurm,
    is_active,
    job_states,
    make_executor,
    new_submission_folder,
    submit,
    wait_for,
)
from revtransfer.results import ResultsTable

from .sweep import SweepReport, cell_lock_held, cell_status, record_failure, sweep_progress

_MAX_ERROR = 2000  # the results table's error column keeps this much


@dataclass
class SweepSubmission:
    cells: list = field(default_factory=list)       # submitted cells, in job order
    records: list = field(default_factory=list)     # their JobRecords
    folder: Path | None = None
    skipped: list[str] = field(default_factory=list)  # finished before (or failed, with --no-retry-failed)
    busy: list[str] = field(default_factory=list)     # queued or running already (SLURM or a local process)

    @property
    def array_id(self) -> str | None:
        return self.records[0].job_id.split("_")[0] if self.records else None


def _dead_job_error(record: JobRecord, state: str, outcome) -> tuple[str, str]:
    """(the row's error, error.txt) for a job that ended without writing the cell's row."""
    if outcome is None:
        tail = record.log_tail(20)
        head = f"SLURM job {record.job_id} ended {state} without a result; last lines of {record.stderr}:\n"
        return head + tail[-(_MAX_ERROR - len(head)):], head + tail
    trace = str(outcome[1]).strip()
    last = trace.splitlines()[-1] if trace else "no traceback"
    return f"SLURM job {record.job_id} failed: {last}"[:_MAX_ERROR], trace


def reconcile(spec, cells=None) -> tuple[dict[str, JobRecord], dict[str, str]]:
    """Each cell's job record and its job's SLURM state (cell id -> record, job id -> state). A job
    that is over without a result, or whose code failed outside the cell's own error handling, is
    written down once as a failed row with its log's last lines. Reads no SLURM state when no cell
    has a record."""
    cells = spec.cells() if cells is None else cells
    records = {c.cell_id: r for c in cells if (r := JobRecord.load(spec.run_dir(c))) is not None}
    states = job_states(r.job_id for r in records.values()) if records else {}
    for cell in cells:
        r = records.get(cell.cell_id)
        if r is None or r.recorded_failure:
            continue
        state = states.get(r.job_id, "UNKNOWN")
        if is_active(state):
            continue
        outcome = r.outcome()
        if outcome is not None and outcome[0] == "success":
            continue
        error, detail = _dead_job_error(r, state, outcome)
        if record_failure(spec, cell, error, detail):
            r.recorded_failure = True
            r.save(spec.run_dir(cell))
    return records, states


def submit_sweep(spec, options: SlurmOptions, *, only: Callable | None = None, retry_failed: bool = True,
                 max_cells: int | None = None) -> SweepSubmission:
    """Submit every pending cell of ``spec`` as one SLURM job array (see the module docstring)."""
    check_slurm()
    cells = [c for c in spec.cells() if only is None or only(c)]
    records, states = reconcile(spec, cells)
    table = ResultsTable(spec.out).read()
    mine = table[table["sweep"] == spec.name] if len(table) else table
    status = dict(zip(mine["cell_id"], mine["status"])) if len(mine) else {}
    sub = SweepSubmission()
    todo = []
    for c in cells:
        r = records.get(c.cell_id)
        if status.get(c.cell_id) == "ok" or (not retry_failed and status.get(c.cell_id) == "failed"):
            sub.skipped.append(c.cell_id)
        elif (r is not None and is_active(states.get(r.job_id, "UNKNOWN"))) or cell_lock_held(spec.run_dir(c)):
            sub.busy.append(c.cell_id)
        else:
            todo.append(c)
    todo = todo[:max_cells] if max_cells is not None else todo
    if not todo:
        return sub
    spec.out.mkdir(parents=True, exist_ok=True)
    sub.folder = new_submission_folder(spec.out)
    executor = make_executor(sub.folder, options, job_name=f"sweep-{spec.name}")
    jobs = submit(executor, [EntryPointJob("probes.jobs:sweep_cell_task", spec, c.cell_id) for c in todo])
    for cell, job in zip(todo, jobs):
        record = JobRecord.of(job, cell.cell_id)
        record.save(spec.run_dir(cell))
        sub.cells.append(cell)
        sub.records.append(record)
    return sub


def wait_sweep(spec, sub: SweepSubmission, echo: Callable[[str], None] = print):
    """Block until every submitted cell's job is over; the run's :class:`SweepReport`."""
    by_job = {r.job_id: c.cell_id for c, r in zip(sub.cells, sub.records)}
    wait_for(by_job, on_change=lambda j, s: echo(f"  {j:>14s} {s:10s} {by_job[j]}"))
    reconcile(spec, sub.cells)
    report = SweepReport(skipped=list(sub.skipped), busy=list(sub.busy))
    rows = ResultsTable(spec.out).read()
    errors = {}
    if len(rows):
        mine = rows[(rows["sweep"] == spec.name) & (rows["status"] == "failed")]
        errors = dict(zip(mine["cell_id"], mine["error"]))
    for cell, record in zip(sub.cells, sub.records):
        outcome = record.outcome()
        result = outcome[1] if outcome is not None and outcome[0] == "success" else None
        if result is None:  # the job died: reconcile wrote its failed row
            report.ran.append(cell.cell_id)
            report.failed[cell.cell_id] = errors.get(cell.cell_id, "the job ended without a result")
        elif result.get("busy"):
            report.busy.append(cell.cell_id)
        elif result.get("skipped"):
            report.skipped.append(cell.cell_id)
        else:
            report.ran.append(cell.cell_id)
            if result.get("error"):
                report.failed[cell.cell_id] = result["error"]
    return report


def status_lines(spec) -> list[str]:
    """One line per cell: its state (ok, failed, partial, todo; queued or running while its SLURM job
    is), and for a cell with a SLURM job, the job's id, state and log."""
    records, states = reconcile(spec)
    lines = []
    for cell, state in cell_status(spec):
        r = records.get(cell.cell_id)
        if r is None:
            lines.append(f"{state:8s} {cell.cell_id}")
            continue
        job_state = states.get(r.job_id, "UNKNOWN")
        if is_active(job_state) and state != "ok":
            state = "queued" if job_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "SPECIAL_EXIT") else "running"
        line = f"{state:8s} {cell.cell_id}  slurm {r.job_id} {job_state}"
        if state in ("running", "failed"):
            line += f"  log: {r.stderr}"
        lines.append(line)
    return lines + [sweep_progress(spec)]
