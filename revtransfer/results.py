"""The results table: ``results.parquet`` (the source of truth) and ``results.csv`` (for eyes and
spreadsheets), one row per sweep cell or detection run. It is library: the apps (probes' sweeps,
detection runs) write it and ``revtransfer report`` reads it. Writers take a file lock, read, upsert
the row by its key and replace both files atomically, so two writers can work at once and a crash
mid-write leaves the previous table intact."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from filelock import FileLock

from revtransfer.atomic import atomic_write

LOCK_NAME = "results.lock"
# The identifying key of a row, and the columns in the order a reader wants them.
KEY = ("sweep", "cell_id")
COLUMNS = (
    "sweep", "cell_id", "status", "arch", "backprop", "corr", "corr_measured", "fraction", "seed", "dataset", "transfer_dataset",
    "n_pretrain", "pretrain_val_acc", "pretrain_best_val_acc", "epochs",
    "probe_acc", "probe_acc_ci_low", "probe_acc_ci_high",
    "probe_auroc", "probe_auroc_ci_low", "probe_auroc_ci_high", "probe_C", "probe_majority_acc",
    "probe_n_train", "probe_n_test",
    # The width-matched control (ProbeSettings.match_dim): the probe on the top-`matched_dim` PCA
    # components. Null when the setting is off; tables written before it lack these columns.
    "probe_acc_matched", "probe_acc_matched_ci_low", "probe_acc_matched_ci_high", "matched_dim",
    "sanity_x_acc", "sanity_x_auroc",
    "feature_dim", "wall_time_s", "pretrain_time_s", "samples_per_s", "peak_mem_mb", "peak_mem_kind",
    "device", "world_size", "git_commit", "torch_version", "timm_version", "run_dir", "error", "finished_at",
)


class ResultsTable:
    def __init__(self, directory: str | os.PathLike, lock_timeout: float = 600):
        self.dir = Path(directory)
        self.parquet = self.dir / "results.parquet"
        self.csv = self.dir / "results.csv"
        # One lock file per table, so every writer (sweeps, detection runs) excludes the others.
        self.lock = FileLock(str(self.dir / LOCK_NAME), timeout=lock_timeout)

    def read(self):
        """The table as a DataFrame (empty, with the standard columns, if there is none yet)."""
        import pandas as pd

        if not self.parquet.exists():
            return pd.DataFrame(columns=list(COLUMNS))
        return pd.read_parquet(self.parquet)

    def upsert(self, rows: Iterable[dict]) -> None:
        """Insert rows, replacing any existing row with the same key (a re-run failed cell)."""
        import pandas as pd

        rows = list(rows)
        for row in rows:
            missing = [k for k in KEY if row.get(k) is None]
            if missing:
                raise ValueError(f"a results row needs {missing}")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.lock:
            table = self.read()
            new = pd.DataFrame(rows)
            if len(table):
                keys = set(zip(*(new[k] for k in KEY)))
                keep = [tuple(r) not in keys for r in zip(*(table[k] for k in KEY))]
                table = pd.concat([table[keep], new], ignore_index=True) if any(keep) else new
            else:
                table = new
            ordered = [c for c in COLUMNS if c in table.columns] + [c for c in table.columns if c not in COLUMNS]
            self._write(table[ordered])

    def remove(self, sweep: str, cell_ids: Iterable[str]):
        """Take these cells' rows out of the table (a study whose protocol changed for them: the
        caller keeps what it removed, which is returned) and write the rest atomically."""
        cell_ids = set(cell_ids)
        with self.lock:
            table = self.read()
            if not len(table):
                return table
            gone = (table["sweep"] == sweep) & table["cell_id"].isin(cell_ids)
            self._write(table[~gone])
            return table[gone].reset_index(drop=True)

    def _write(self, table) -> None:  # under self.lock
        atomic_write(self.parquet, lambda tmp: table.to_parquet(tmp, index=False))
        atomic_write(self.csv, lambda tmp: table.to_csv(tmp, index=False))

    def finished_cells(self, sweep: str) -> set[str]:
        table = self.read()
        if not len(table):
            return set()
        done = table[(table["sweep"] == sweep) & (table["status"] == "ok")]
        return set(done["cell_id"])
