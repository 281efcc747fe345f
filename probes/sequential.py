"""Seeds until decided: ``revtransfer sweep FILE --until-decided [--budget-hours H]``.

The sweep file's ``claims:`` declares the primary claim, the one-sided alpha, the alpha spending
(``obf``: Lan-DeMets O'Brien-Fleming) and the most seeds per (cell, arch) (``max_seeds``): the
group-sequential design, fixed before the first look. Then:

1. Look 1 is the rows that exist (after the grid's own seeds have run): the primary claim is
   judged (``revtransfer.report.claims.primary_z``: the model's t, as a z with the same one-sided
   p) and the design's end is fixed: ``max_seeds`` for every cell (``allocation: equal``), or
   seeds in proportion to where the primary contrast's variance is (``neyman``: the heaviest cell
   at ``max_seeds``, a quiet one at fewer), from look 1's variances.
2. Each block gives every cell below its final seeds one more seed (both archs), then takes a
   look: information fraction t = the primary contrast's variance at the end over its variance now,
   with look 1's per-group variances (with equal seeds in every cell: seeds so far / max seeds),
   and ``stats.decide`` against the efficacy boundary the spending function gives at t.
3. It stops when the claim is decided (z >= the boundary: reproduced), when the final seeds are
   reached (the last look spends what alpha is left; below its boundary the claim is not
   established), or when the next block does not fit in the budget: a block's cost is estimated
   from the measured cell times in the table (median ``wall_time_s`` per arch), so a block that
   cannot finish is not started. The budget is the extension's, over every call: the seeds already
   added (rows beyond the grid's seeds, each at its arch's median cell time) count against it, so a
   study resumed across sittings stops where one uninterrupted call would have.

The state (looks, information fractions, z, boundaries, decisions, the design) is written
atomically to ``OUT/sequential.json`` after every look; re-running continues from it (a killed
block resumes like any sweep). Failed cells are retried once per block; a look is taken on the
rows there are.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from revtransfer.atomic import atomic_write_json
from revtransfer.report.claims import (
    SEQUENTIAL_FILE,
    final_seeds,
    info_fraction,
    parse_claim_id,
    per_seed_variance,
    primary_weights,
    primary_z,
    read_json,
)
from revtransfer.results import ResultsTable

from .sweep import CellRunner, SweepError, SweepSpec, run_cell, run_sweep

log = logging.getLogger(__name__)
TERMINAL = ("decided", "max seeds")


@dataclass
class SequentialReport:
    stop: str                  # decided | max seeds | budget spent
    message: str
    looks: list = field(default_factory=list)
    ran: int = 0               # cells run by this call


def state_path(spec: SweepSpec):
    return spec.out / SEQUENTIAL_FILE


def seed_list(spec: SweepSpec, n: int) -> list[int]:
    """The first n seeds of a cell: the grid's seeds, then the next integers after its largest."""
    seeds = list(spec.seeds)
    nxt = max(seeds) + 1
    while len(seeds) < n:
        seeds.append(nxt)
        nxt += 1
    return seeds


def _key(corr, fraction) -> tuple[float, float]:
    return round(float(corr), 9), round(float(fraction), 9)


def _ok_rows(spec: SweepSpec):
    t = ResultsTable(spec.out).read()
    if not len(t):
        return t
    return t[(t["sweep"] == spec.name) & (t["status"] == "ok")]


def _median_times(rows) -> dict:
    if not len(rows) or "wall_time_s" not in rows:
        return {}
    t = rows.assign(w=rows["wall_time_s"].astype(float)).dropna(subset=["w"])
    out = {a: float(g["w"].median()) for a, g in t.groupby("arch")}
    if len(t):
        out["*"] = float(t["w"].median())
    return out


def extension_seconds(spec: SweepSpec) -> float:
    """What the seeds the extension added (rows beyond the grid's own seeds) cost, each at its arch's
    median cell time: the measure blocks are estimated in, and one a cell paused for hours (its
    wall time includes the pause) does not inflate."""
    rows = _ok_rows(spec)
    times = _median_times(rows)
    if not times:
        return 0.0
    added = rows[~rows["seed"].isin(list(spec.seeds))]
    return float(sum(times.get(a, times["*"]) for a in added["arch"]))


def until_decided(spec: SweepSpec, budget_hours: float | None = None, *, cell_runner: CellRunner = run_cell,
                  progress: bool = True, redeclare: bool = False, echo: Callable[[str], None] = log.info,
                  clock: Callable[[], float] = time.monotonic) -> SequentialReport:
    """Add blocks of seeds to ``spec`` until its primary claim is decided, its declared maximum seeds
    are reached or ``budget_hours`` is spent (module docstring)."""
    from revtransfer.provenance import utc_now
    from revtransfer.report import stats as S

    from .declaration import ensure_declaration

    decl = spec.claims
    if decl.max_seeds is None:
        raise SweepError(f"sweep {spec.name}: --until-decided needs claims.max_seeds in the sweep file (the "
                         "group-sequential design is declared before the first look)")
    if decl.max_seeds < len(spec.seeds):
        raise SweepError(f"sweep {spec.name}: claims.max_seeds={decl.max_seeds} is below the grid's "
                         f"{len(spec.seeds)} seeds")
    kind, column = parse_claim_id(decl.primary)
    spec.out.mkdir(parents=True, exist_ok=True)
    record = ensure_declaration(spec, redeclare=redeclare)
    path = state_path(spec)
    state = read_json(path)
    if state and state.get("declaration") != record["digest"]:
        if not redeclare:
            raise SweepError(f"sweep {spec.name}: {path} was made under declaration {state.get('declaration')}, the "
                             f"sweep file's is {record['digest']}: refused (--redeclare continues it under the "
                             "new one)")
        state.setdefault("redeclared", []).append({"at": utc_now(), "from": state.get("declaration"),
                                                   "to": record["digest"]})
        state["declaration"] = record["digest"]
    if state and state.get("status") in TERMINAL:
        return SequentialReport(state["status"], f"already {state['status']}: {state.get('message', '')}",
                                state.get("looks", []))
    state = state or {"format": 1, "sweep": spec.name, "declaration": record["digest"], "primary": decl.primary,
                      "column": column, "alpha": decl.alpha, "spending": decl.spending,
                      "max_seeds": decl.max_seeds, "allocation": decl.allocation, "looks": [], "design": None,
                      "status": "continue"}
    cells = sorted({_key(c.corr, c.fraction) for c in spec.cells()})
    budget_s = math.inf if budget_hours is None else float(budget_hours) * 3600
    t0 = clock()
    before = extension_seconds(spec)  # earlier calls' added seeds: the budget is the extension's, not this call's
    spent = [0.0]  # measured cell time of the cells this call ran
    ran = [0]

    def save(status: str, message: str) -> None:
        state["status"], state["message"], state["updated_at"] = status, message, utc_now()
        atomic_write_json(path, state)

    def block(targets: dict) -> str | None:
        """Run the cells up to ``targets`` seeds; the stop message when it does not fit the budget."""
        ext = dataclasses.replace(spec, seeds=seed_list(spec, max(targets.values())))
        index = {s: i for i, s in enumerate(ext.seeds)}

        def only(c):
            return index[c.seed] < targets[_key(c.corr, c.fraction)]

        done = ResultsTable(spec.out).finished_cells(spec.name)
        todo = [c for c in ext.cells() if only(c) and c.cell_id not in done]
        if not todo:
            return None
        times = _median_times(_ok_rows(spec))
        est = sum(times.get(c.arch, times.get("*", 0.0)) for c in todo)
        used = before + max(clock() - t0, spent[0])
        if used + est > budget_s:
            return (f"budget spent: the next block ({len(todo)} cells, ~{est / 3600:.1f} h by the measured cell "
                    f"times) does not fit in the {budget_s / 3600:g} h budget ({used / 3600:.1f} h used); re-run "
                    "with a budget to continue")
        echo(f"block: {len(todo)} cells (~{est / 3600:.1f} h)")
        for _attempt in range(2):  # a failed cell is retried once
            rep = run_sweep(ext, cell_runner=cell_runner, progress=progress, only=only, redeclare=redeclare)
            ran[0] += len(rep.ran)
            if rep.ran:
                t = ResultsTable(spec.out).read().set_index("cell_id")
                w = t.loc[t.index.intersection(rep.ran), "wall_time_s"] if "wall_time_s" in t else []
                spent[0] += float(np.nansum(np.asarray(w, dtype=float)))
            if not rep.failed:
                break
        return None

    def look(targets: dict) -> dict | None:
        rows = _ok_rows(spec)
        sr = S.study_rows(rows, column)
        if sr.empty or sr.groupby(["corr", "fraction", "rev"]).size().max() < 2:
            raise SweepError(f"sweep {spec.name}: no look possible: {column} needs >= 2 seeds with both archs per cell")
        model = S.fit_effects(None, column, ("corr",), 1 - 2 * decl.alpha, rows=sr)
        noise = "row" if sr["n_test"].notna().all() else "none"
        g = model.groups
        gkeys = [(*_key(c, f), int(r)) for c, f, r in zip(g["corr"], g["fraction"], g["rev"])]
        if state["design"] is None:  # fixed at look 1, never revised
            fin = {_key(*k): int(v) for k, v in final_seeds(model, kind, decl, noise).items()}
            w = primary_weights(model, kind)
            v = per_seed_variance(model, noise)
            state["design"] = {"final_seeds": [[c, f, n] for (c, f), n in sorted(fin.items())],
                               "groups": [[c, f, r, float(wi), float(vi)] for (c, f, r), wi, vi in zip(gkeys, w, v)],
                               "noise": noise, "fixed_at_look": 1}
        design = state["design"]
        fin = {(c, f): n for c, f, n in design["final_seeds"]}
        dgroups = {(c, f, r): (wi, vi) for c, f, r, wi, vi in design["groups"]}
        n_now = dict(zip(gkeys, g["n"].astype(float)))
        keys = list(dgroups)
        w = np.array([dgroups[k][0] for k in keys])
        v = np.array([dgroups[k][1] for k in keys])
        n = np.array([n_now.get(k, 0.0) for k in keys])
        n_end = np.array([fin[(k[0], k[1])] for k in keys], dtype=float)
        t = info_fraction(w, v, n, n_end)
        prev = [lk["info_fraction"] for lk in state["looks"]]
        final = all(targets[c] >= fin.get(c, 0) for c in targets)
        if prev and t <= prev[-1] + 1e-9 and not final:
            echo(f"no look: the information fraction did not grow ({t:.3f})")
            return None
        if prev and t <= prev[-1] + 1e-9:
            t = min(1.0, prev[-1] + 1e-6)  # a final look on no new rows (failed cells): spend what is left
        z, c = primary_z(model, kind)
        d = S.decide(len(prev) + 1, [*prev, t], z, decl.alpha, decl.spending, final=final)
        lk = {"look": len(prev) + 1, "at": utc_now(), "rows": int(len(rows)), "pairs": int(len(S.pair_gains(sr))),
              "targets": [[c_, f_, int(targets[(c_, f_)])] for c_, f_ in sorted(targets)],
              "seeds_min": int(g["n"].min()), "seeds_max": int(g["n"].max()), "info_fraction": float(t),
              "estimate": c.estimate, "se": c.se, "df": c.df, "t": c.t, "z": float(z), "contrast": c.name,
              **{k: d[k] for k in ("boundary_z", "nominal_p", "alpha_spent", "alpha_spent_cumulative", "decision",
                                   "final", "conditional_power")}}
        state["looks"].append(lk)
        state["targets"] = lk["targets"]
        echo(f"look {lk['look']}: t = {t:.2f}, {c.name} {c.estimate:+.2f} points, z = {z:.2f} against "
             f"{d['boundary_z']:.2f}: {d['decision']}")
        return lk

    def targets_of(lk) -> dict:
        return {(c, f): int(n) for c, f, n in lk}

    # look 1: the grid's own seeds, then everything there is
    if not state["looks"]:
        targets = {c: len(spec.seeds) for c in cells}
        stop = block(targets)
        if stop:
            save("budget spent", stop)
            return SequentialReport("budget spent", stop, state["looks"], ran[0])
        lk = look(targets)
        save("continue", "look 1 taken")
    while True:
        lk = state["looks"][-1]
        targets = targets_of(state["targets"])
        if lk["decision"] == "reject":
            msg = (f"decided at look {lk['look']} (information fraction {lk['info_fraction']:.2f}): z {lk['z']:.2f} >= "
                   f"boundary {lk['boundary_z']:.2f}, so the primary claim {decl.primary} is reproduced under the "
                   f"declared group-sequential rule ({decl.spending}, one-sided alpha {decl.alpha:g}); gain "
                   f"{lk['estimate']:+.2f} points")
            save("decided", msg)
            return SequentialReport("decided", msg, state["looks"], ran[0])
        if lk["final"]:
            msg = (f"max seeds reached at look {lk['look']}: z {lk['z']:.2f} < boundary {lk['boundary_z']:.2f}, so the "
                   f"primary claim {decl.primary} is not established at the declared maximum of {decl.max_seeds} "
                   f"seeds (gain {lk['estimate']:+.2f} points)")
            save("max seeds", msg)
            return SequentialReport("max seeds", msg, state["looks"], ran[0])
        fin = {(c, f): n for c, f, n in state["design"]["final_seeds"]}
        nxt = {c: min(fin.get(c, decl.max_seeds), targets[c] + 1) for c in targets}
        stop = block(nxt)
        if stop:
            save("budget spent", stop)
            return SequentialReport("budget spent", stop, state["looks"], ran[0])
        if look(nxt) is None:
            state["targets"] = [[c, f, n] for (c, f), n in sorted(nxt.items())]
        save("continue", f"look {state['looks'][-1]['look']} taken")
