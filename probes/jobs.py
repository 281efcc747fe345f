"""The study's launch job: one sweep cell, ``probes.jobs:sweep_cell_task`` (what each task of a
``revtransfer sweep FILE --launcher slurm`` job array runs)."""
from __future__ import annotations

import time


def sweep_cell_task(spec, cell_id: str) -> dict:
    """``run_sweep`` restricted to one cell, with the cell's lock, resume and failure row (the local
    code). A requeued task whose cell finished meanwhile does nothing."""
    from .sweep import run_sweep

    for _attempt in range(4):  # a status or submit command may hold the cell's lock for a moment
        report = run_sweep(spec, progress=False, retry_failed=True, only=lambda c: c.cell_id == cell_id)
        if cell_id not in report.busy:
            break
        time.sleep(2.0)
    return {"cell_id": cell_id, "ran": cell_id in report.ran, "busy": cell_id in report.busy,
            "skipped": cell_id in report.skipped, "error": report.failed.get(cell_id)}
