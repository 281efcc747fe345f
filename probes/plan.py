"""``revtransfer sweep FILE --plan [--pilot RESULTS]``: the power of the declared claims and the
seeds they need, before compute is spent.

From the sweep's own rows (its results table), or from another study's (``--pilot``: a results
dir, or a ``results.parquet`` / ``results.csv`` file): one line per claim (role, estimate now,
standard error, the smallest effect detected with the declared power at the present seeds, the
seeds per cell and arch each declared effect needs), where the primary claim's variance is (per
cell: the seed SDs, the test-set SD, its share, the cheapest (Neyman) seeds), the group-sequential
design (the looks, their boundaries, the power at each effect, where z stands), and what a block
of seeds costs at the measured cell times. Reads only; runs nothing.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from revtransfer.report.claims import final_seeds, fit_column, parse_claim_id, plan_lines, read_json
from revtransfer.results import ResultsTable

from .sweep import SweepError, SweepSpec


def load_rows(source: str | Path) -> pd.DataFrame:
    """A results table from a dir (its results.parquet, else results.csv) or a .parquet / .csv file."""
    p = Path(source)
    if p.is_dir():
        if (p / "results.parquet").exists():
            return pd.read_parquet(p / "results.parquet")
        if (p / "results.csv").exists():
            return pd.read_csv(p / "results.csv")
        raise SweepError(f"--pilot {source}: no results.parquet or results.csv in that directory")
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    if p.suffix == ".csv":
        return pd.read_csv(p)
    raise SweepError(f"--pilot {source}: give a results dir, a .parquet or a .csv file")


def plan_text(spec: SweepSpec, pilot: str | Path | None = None) -> str:
    if pilot is not None:
        rows = load_rows(pilot)
        sweeps = sorted({str(s) for s in rows["sweep"].dropna()}) if "sweep" in rows else []
        source = f"the pilot {pilot}" + (f" (sweep {', '.join(sweeps)})" if sweeps else "")
    else:
        t = ResultsTable(spec.out).read()
        rows = t[t["sweep"] == spec.name] if len(t) else t
        source = f"sweep {spec.name}'s own rows ({spec.out / 'results.parquet'})"
    if "status" in rows:
        rows = rows[rows["status"].eq("ok")]
    lines = [f"sweep {spec.name}: primary {spec.claims.primary}; secondary {', '.join(spec.claims.secondary) or '-'}; "
             f"exploratory {', '.join(spec.claims.exploratory) or '-'}"]
    lines += plan_lines(rows, spec.claims, source)
    lines += _cost_lines(spec, rows)
    state = read_json(spec.out / "sequential.json")
    if state and state.get("looks"):
        lk = state["looks"][-1]
        lines.append(f"sequential state ({spec.out / 'sequential.json'}): {len(state['looks'])} look(s), the last at "
                     f"t = {lk['info_fraction']:.2f}: z {lk['z']:.2f} against {lk['boundary_z']:.2f}, "
                     f"{lk['decision']}; status {state.get('status')}")
    return "\n".join(lines)


def _cost_lines(spec: SweepSpec, rows: pd.DataFrame) -> list[str]:
    """What a block of seeds costs at the measured median cell time (per arch) of ``rows``."""
    if not len(rows) or "wall_time_s" not in rows or rows["wall_time_s"].isna().all():
        return ["cost: no measured cell times in these rows"]
    times = rows.assign(w=pd.to_numeric(rows["wall_time_s"], errors="coerce")).groupby("arch")["w"].median()
    per_cell = {a: float(times.get(a, times.median())) for a in spec.archs}
    pair = sum(per_cell.values())
    n_cells = len(spec.corrs) * len(spec.fractions)
    line = (f"cost: a cell of both archs takes ~{pair / 60:.0f} min at the measured medians "
            f"({', '.join(f'{a} {t / 60:.1f} min' for a, t in per_cell.items())}); one seed for all "
            f"{n_cells} cells: ~{n_cells * pair / 3600:.1f} h")
    kind, column = parse_claim_id(spec.claims.primary)
    if spec.claims.max_seeds is not None and column in rows:
        fit = fit_column(rows, column, spec.claims.alpha, spec.claims.sesoi, n_boot=20)
        if fit is not None:
            fin = final_seeds(fit.model, kind, spec.claims, fit.noise)
            now = fit.model.groups.groupby(["corr", "fraction"])["n"].max()
            more = sum(max(0, n - int(now[k])) for k, n in fin.items())
            line += (f"; to the design's end: {more} more seeds per arch over the cells = ~{more * pair / 3600:.1f} h "
                     "(less if decided early)")
    return [line]
