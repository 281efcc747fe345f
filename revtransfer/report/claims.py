"""A study's declared claims, and their verdicts by the rules in ``revtransfer.report.stats``.

The thesis's claims (Zhu 2023, Fig 4.2 / 4.3), each on one probe column:

- ``a``  "RevViT >= ViT across correlations and data fractions": the RevViT - ViT gain averaged
  over every (corr, fraction) cell;
- ``b1`` "the largest gains near corr 0.3": gain(0.3) - gain(c) > 0 for every other corr c
  (an intersection-union test);
- ``b2`` "larger gains with less data": gain(smallest fraction) - gain(largest).

A claim id is the claim plus an optional column suffix: ``a`` is judged on ``probe_acc`` (the main
probe), ``a_matched`` on ``probe_acc_matched`` (the width-matched control), ``a_k64`` on
``probe_acc_k64`` (one k of a multi-k width control); in general ``<claim>_<s>`` reads
``probe_acc_<s>``.

The declaration (a sweep file's ``claims:`` section; ``Declaration``) says, before the cells run,
which claim is primary, which are secondary and which exploratory, at what one-sided alpha, with
what smallest effect of interest, and the group-sequential design (max seeds, alpha spending,
allocation). ``revtransfer sweep`` records it in ``OUT/declaration.json`` (``DECLARATION_FILE``)
before any cell runs, and each row it writes carries its digest (column ``declaration``).

Verdicts (``judge_declared``): reproduced / refuted / inconclusive / not testable.

- primary: judged alone at one-sided ``alpha``. For ``a`` the model's t test, the sign-flip test and
  the bootstrap interval must all agree (``stats.primary_verdict``); for ``b1`` / ``b2`` the model's
  contrast p-values.
- secondary: Holm's step-down over the declared secondary claims at ``alpha``, separately for the
  "reproduced" p-values and for the "refuted" ones (``stats.secondary_verdicts``). An ``a`` claim's
  p-value here is the larger of the model's and the sign-flip test's (both must reject).
- exploratory (declared so, or not declared at all): unadjusted p-values at ``alpha``; shown, never
  counted as a claim confirmed.

Every verdict carries its power: the smallest effect it detects with ``power`` at the present
seeds, and the seeds per (cell, arch) that ``effects`` points need (two-sided 2 x alpha, divided by
the size of the secondary family for a secondary claim: Holm's first step).

Pure functions on a results table and two JSON files; imports nothing of the apps.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # stats needs statsmodels: loaded where it is used, so a sweep file parses without it
    from . import stats as S

DECLARATION_FILE = "declaration.json"
SEQUENTIAL_FILE = "sequential.json"
KINDS = ("a", "b1", "b2")
ROLES = ("primary", "secondary", "exploratory")
CLAIM_TEXT = {"a": "(a) RevViT >= ViT (Fig 4.2)", "b1": "(b1) largest gain near corr 0.3 (Fig 4.3)",
              "b2": "(b2) larger gain with less data (Fig 4.3)"}  # as stats.CLAIMS (stats needs statsmodels)
SPENDINGS = ("obf", "pocock")  # stats.SPENDING
ALLOCATIONS = ("equal", "neyman")


class DeclarationError(ValueError):
    pass


# --- claim ids -------------------------------------------------------------------------------------
def parse_claim_id(claim_id: str) -> tuple[str, str]:
    """(kind, column) of a claim id: "a" -> ("a", "probe_acc"), "a_matched" -> ("a", "probe_acc_matched")."""
    if not isinstance(claim_id, str):
        raise DeclarationError(f"claim {claim_id!r}: give a claim id such as a, b1, b2 or a_matched")
    kind, sep, suffix = claim_id.partition("_")
    if kind not in KINDS or (sep and not suffix):
        raise DeclarationError(f"claim {claim_id!r}: give a, b1 or b2, optionally with a column suffix "
                               "(a_matched: the width-matched control; a_k64: probe_acc_k64)")
    return kind, f"probe_acc_{suffix}" if suffix else "probe_acc"


def column_label(column: str) -> str:
    if column == "probe_acc":
        return "main probe"
    if column == "probe_acc_matched":
        return "width-matched control"
    if column.startswith("probe_acc_k") and column[11:].isdigit():
        return f"width-matched, k = {column[11:]}"
    return column


# --- the declaration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Declaration:
    """A study's claims, declared before its cells run (see the module docstring)."""
    primary: str = "a"
    secondary: tuple[str, ...] = ("b1", "b2")
    exploratory: tuple[str, ...] = ()
    alpha: float = 0.025          # one-sided (0.025: the verdicts agree with the 95% intervals shown)
    sesoi: float = 0.0            # smallest effect of interest, points
    max_seeds: int | None = None  # seeds per (cell, arch) at most, for --until-decided
    spending: str = "obf"         # alpha spending of the group-sequential rule: obf | pocock
    allocation: str = "equal"     # seeds per block: equal (one per cell) | neyman (where the variance is)
    power: float = 0.8
    effects: tuple[float, ...] = (1.0, 2.0)  # points: seeds needed are reported for each
    min_x_acc: float | None = 0.90  # robustness: the declared claims again without cells below this on X
    seen_before: str = ""         # free text: what had been seen when this was declared (not hashed)
    note: str = ""                # free text (not hashed)

    _TEXT = ("seen_before", "note")

    @classmethod
    def from_dict(cls, d: dict | None) -> "Declaration":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DeclarationError(f"claims: unknown keys {unknown}; known: {sorted(names)}")
        for key in ("secondary", "exploratory", "effects"):
            if key in d:
                v = d[key]
                d[key] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        decl = cls(**d)
        decl.check()
        return decl

    def check(self) -> None:
        ids = [self.primary, *self.secondary, *self.exploratory]
        for cid in ids:
            parse_claim_id(cid)
        dup = sorted({c for c in ids if ids.count(c) > 1})
        if dup:
            raise DeclarationError(f"claims: {dup} declared in more than one role")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 0.5):
            raise DeclarationError(f"claims.alpha={self.alpha!r}: a one-sided level in (0, 0.5), e.g. 0.025")
        if not (isinstance(self.sesoi, (int, float)) and self.sesoi >= 0):
            raise DeclarationError(f"claims.sesoi={self.sesoi!r}: points >= 0")
        if self.max_seeds is not None and (isinstance(self.max_seeds, bool) or not isinstance(self.max_seeds, int)
                                           or self.max_seeds < 2):
            raise DeclarationError(f"claims.max_seeds={self.max_seeds!r}: an integer >= 2 (seeds per cell and arch)")
        if self.spending not in SPENDINGS:
            raise DeclarationError(f"claims.spending={self.spending!r}: one of {list(SPENDINGS)}")
        if self.allocation not in ALLOCATIONS:
            raise DeclarationError(f"claims.allocation={self.allocation!r}: one of {list(ALLOCATIONS)}")
        if not 0 < self.power < 1:
            raise DeclarationError(f"claims.power={self.power!r}: in (0, 1)")
        if not self.effects or any(not (isinstance(e, (int, float)) and e > 0) for e in self.effects):
            raise DeclarationError(f"claims.effects={list(self.effects)!r}: positive points")

    def as_dict(self) -> dict:
        d = asdict(self)
        for key in ("secondary", "exploratory", "effects"):
            d[key] = list(d[key])
        return d

    def hashed(self) -> dict:
        """What the digest covers: everything but the free text."""
        return {k: v for k, v in self.as_dict().items() if k not in self._TEXT}

    def digest(self) -> str:
        return _digest(self.hashed())

    def roles(self) -> list[tuple[str, str]]:
        return ([(self.primary, "primary")] + [(c, "secondary") for c in self.secondary]
                + [(c, "exploratory") for c in self.exploratory])

    def role_of(self, claim_id: str) -> str | None:
        return dict(self.roles()).get(claim_id)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def study_digest(claims: dict, probe: dict | None) -> str:
    """The digest of a study's declaration: its hashed claims and its probe settings (the
    ``declaration`` column of every row written under it)."""
    return _digest({"claims": claims, "probe": probe or {}})


def describe_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every key that differs between two (nested) dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_declaration(results_dir) -> dict | None:
    """The declaration record next to a results table (None when there is none)."""
    return read_json(Path(results_dir) / DECLARATION_FILE)


def read_sequential(results_dir) -> dict | None:
    return read_json(Path(results_dir) / SEQUENTIAL_FILE)


def declaration_of(record: dict | None) -> Declaration:
    """The Declaration of a record (the defaults when there is none)."""
    if not record:
        return Declaration()
    return Declaration.from_dict({**record.get("claims", {}), "seen_before": record.get("seen_before", ""),
                                  "note": record.get("note", "")})


def declaration_lines(record: dict | None, results: pd.DataFrame | None = None) -> list[str]:
    """What a reader must know about a declaration: when, at which commit, after how many rows,
    whether it changed since, and which rows were made under it."""
    if not record:
        return ["No declaration found next to the results: the claims below are judged with the default roles "
                "(primary: (a) on the main probe; secondary: (b1), (b2)), which were not declared in advance."]
    lines = [f"Declared at {record.get('declared_at')} (commit `{record.get('git_commit')}`, digest "
             f"`{record.get('digest')}`), when the table held {record.get('rows_at_declaration', 0)} finished "
             f"row(s) of sweep `{record.get('sweep')}`."]
    if record.get("rows_at_declaration"):
        lines.append(f"Those {record['rows_at_declaration']} row(s) were seen before the claims were declared: "
                     + (record.get("seen_before") or "the declaration does not say what was looked at.")
                     + " A group-sequential rule counts them as its first look.")
    history = record.get("history") or []
    if history:
        for h in history:
            lines.append(f"Changed (--redeclare) at {h.get('replaced_at')}, after {h.get('rows_then', 0)} row(s): "
                         + "; ".join(h.get("changes") or ["(no recorded difference)"])
                         + f" (previous digest `{h.get('digest')}`, declared {h.get('declared_at')}).")
    else:
        lines.append("Not changed since.")
    if results is not None and len(results) and "sweep" in results:
        mine = results[results["sweep"].eq(record.get("sweep"))]
        if "status" in mine:
            mine = mine[mine["status"].eq("ok")]
        col = mine["declaration"] if "declaration" in mine else pd.Series([None] * len(mine), index=mine.index)
        under = int((col == record.get("digest")).sum())
        older = int((col.notna() & (col != record.get("digest"))).sum())
        before = int(col.isna().sum())
        lines.append(f"Rows: {under} made under this declaration, {before} without one (before it was recorded)"
                     + (f", {older} under an earlier one" if older else "") + ".")
        if "probe_settings" in mine:
            ps = sorted({str(v) for v in mine["probe_settings"].dropna()})
            if len(ps) > 1:
                lines.append(f"Warning: the rows were probed with {len(ps)} different probe settings "
                             f"({', '.join(ps)}).")
    return lines


# --- judging the declared claims -------------------------------------------------------------------
@dataclass
class ColumnFit:
    """Everything the verdicts of one probe column need."""
    column: str
    rows: pd.DataFrame
    model: S.EffectModel
    sign_flip: S.SignFlip
    sign_flip_below: S.SignFlip
    sign_flip_two_sided: S.SignFlip
    boot: S.Bootstrap
    noise: str
    notes: list = field(default_factory=list)


def fit_column(results: pd.DataFrame, column: str, alpha: float = 0.025, sesoi: float = 0.0, n_boot: int = 4000,
               seed: int = 0, min_x_acc: float | None = None) -> ColumnFit | None:
    """The model, sign-flip tests and bootstrap of ``column`` (None: fewer than 2 seeds per group)."""
    from . import stats as S
    rows = S.study_rows(results, column, min_x_acc=min_x_acc)
    if rows.empty or rows.groupby(["corr", "fraction", "rev"]).size().max() < 2:
        return None
    model = S.fit_effects(None, column, ("corr",), 1 - 2 * alpha, rows=rows)
    pg = S.pair_gains(rows)
    sf = S.sign_flip_test(pg["gain"], pg["weight"], "greater", seed=seed)
    below = S.sign_flip_test(pg["gain"], pg["weight"], "less", null=sesoi, seed=seed)
    two = S.sign_flip_test(pg["gain"], pg["weight"], "two-sided", seed=seed)
    noise = "row" if rows["n_test"].notna().all() else "none"
    boot = S.bootstrap_contrasts(model, rows, n_boot=n_boot, level=1 - 2 * alpha, test_noise=noise, seed=seed)
    return ColumnFit(column, rows, model, sf, below, two, boot, noise)


def _claim_stats(fit: ColumnFit, kind: str, sesoi: float) -> dict | None:
    """Estimate, CIs and p-values of one claim kind on one column."""
    from . import stats as S
    m = fit.model
    if kind == "a":
        c = m.main
        return {"contrast": c, "boot": fit.boot.ci["a"], "p_model": c.p_greater, "p_model_refute": c.p_below(sesoi),
                "p_perm": fit.sign_flip.p, "p_perm_refute": fit.sign_flip_below.p,
                "p_perm_two_sided": fit.sign_flip_two_sided.p,
                "p_support": max(c.p_greater, fit.sign_flip.p),
                "p_refute": max(c.p_below(sesoi), fit.sign_flip_below.p)}
    if kind == "b1":
        cs = m.b1()
        if not cs:
            return None
        worst = max(cs, key=lambda c: c.p_greater)
        p_sup, p_ref = S.b1_pvalues(cs, sesoi)
        return {"contrast": worst, "boot": fit.boot.ci.get(f"b1: {worst.name}", (math.nan, math.nan)),
                "p_model": p_sup, "p_model_refute": p_ref, "p_perm": math.nan, "p_perm_refute": math.nan,
                "p_perm_two_sided": math.nan, "p_support": p_sup, "p_refute": p_ref,
                "pairwise": "; ".join(f"{c.name} = {c.estimate:+.1f} [{c.ci_low:+.1f}, {c.ci_high:+.1f}]" for c in cs)}
    c = m.b2()
    if c is None:
        return None
    return {"contrast": c, "boot": fit.boot.ci.get("b2", (math.nan, math.nan)), "p_model": c.p_greater,
            "p_model_refute": c.p_below(sesoi), "p_perm": math.nan, "p_perm_refute": math.nan,
            "p_perm_two_sided": math.nan, "p_support": c.p_greater, "p_refute": c.p_below(sesoi)}


def _plain_verdict(p_support: float, p_refute: float, alpha: float) -> str:
    if not math.isfinite(p_support):
        return "not testable"
    return "reproduced" if p_support < alpha else "refuted" if p_refute < alpha else "inconclusive"


def claim_ids_to_judge(decl: Declaration, results: pd.DataFrame) -> list[tuple[str, str]]:
    """(claim id, role) for the declared claims and, as exploratory, the undeclared claims on the main
    probe and the width-matched control where the table has them."""
    out = decl.roles()
    seen = {c for c, _ in out}
    for suffix in ("", "_matched"):
        column = "probe_acc" + suffix
        if column in results and pd.to_numeric(results[column], errors="coerce").notna().any():
            out += [(k + suffix, "exploratory (undeclared)") for k in KINDS if k + suffix not in seen]
    return out


def judge_declared(results: pd.DataFrame, decl: Declaration | None = None, *, n_boot: int = 4000, seed: int = 0,
                   min_x_acc: float | None = None, only_declared: bool = False,
                   with_power: bool = True) -> pd.DataFrame:
    """One row per claim (declared ones first): claim_id, claim, role, probe, column, estimate, se, df,
    ci_low, ci_high (the model's 95% interval at 1 - 2 alpha), boot_low, boot_high, p_model,
    p_perm (sign-flip, one-sided; two-sided in p_perm_two_sided), p_support / p_refute (the
    p-values the verdict uses), p_adj / p_adj_refute (Holm for the secondary claims), d, verdict,
    and with ``with_power``: seeds_now, alpha_power (two-sided), mde, power_at_<e>, seeds_for_<e>."""
    from . import stats as S
    decl = decl or Declaration()
    ids = decl.roles() if only_declared else claim_ids_to_judge(decl, results)
    fits: dict[str, ColumnFit | None] = {}
    recs = []
    for cid, role in ids:
        kind, column = parse_claim_id(cid)
        if column not in fits:
            fits[column] = (fit_column(results, column, decl.alpha, decl.sesoi, n_boot, seed, min_x_acc)
                            if column in results else None)
        fit = fits[column]
        st = _claim_stats(fit, kind, decl.sesoi) if fit is not None else None
        rec = {"claim_id": cid, "claim": CLAIM_TEXT[kind], "role": role, "probe": column_label(column),
               "column": column, "kind": kind}
        if st is None:
            rec.update(verdict="not testable", p_support=math.nan, p_refute=math.nan)
            recs.append(rec)
            continue
        c = st.pop("contrast")
        boot = st.pop("boot")
        rec.update(estimate=c.estimate, se=c.se, df=c.df, ci_low=c.ci_low, ci_high=c.ci_high, boot_low=boot[0],
                   boot_high=boot[1], d=c.d, contrast=c.name, n_pairs=len(S.pair_gains(fit.rows)),
                   seeds_now=float(fit.model.groups["n"].median()), noise=fit.noise, **st)
        if role == "primary":
            if kind == "a":
                pv = S.primary_verdict(c, decl.alpha, decl.sesoi, fit.sign_flip.p, fit.sign_flip_below.p, boot)
                rec["verdict"] = pv["verdict"]
            else:
                rec["verdict"] = _plain_verdict(st["p_support"], st["p_refute"], decl.alpha)
        elif role != "secondary":
            rec["verdict"] = _plain_verdict(st["p_support"], st["p_refute"], decl.alpha)
        recs.append(rec)
    table = pd.DataFrame(recs)
    for col in ("verdict", "p_adj", "p_adj_refute"):
        if col not in table:
            table[col] = math.nan
    table["verdict"] = table["verdict"].astype(object)
    sec = table[(table["role"] == "secondary") & table["p_support"].notna()] if len(table) else table
    if len(sec):
        sv = S.secondary_verdicts({r.claim_id: (r.p_support, r.p_refute) for r in sec.itertuples()}, decl.alpha)
        for i, r in sec.iterrows():
            v = sv[r["claim_id"]]
            table.loc[i, ["verdict", "p_adj", "p_adj_refute"]] = [v["verdict"], v["p_support_holm"], v["p_refute_holm"]]
    if with_power and len(table):
        _add_power(table, decl, fits)
    return table


def power_alpha(role: str, decl: Declaration, n_secondary: int) -> float:
    """The two-sided alpha a claim's power is computed at: 2 alpha, over the secondary family's size
    for a secondary claim (Holm's first, strictest step)."""
    return 2 * decl.alpha / (max(n_secondary, 1) if role == "secondary" else 1)


def _add_power(table: pd.DataFrame, decl: Declaration, fits: dict) -> None:
    from . import stats as S
    n_sec = int(((table["role"] == "secondary") & table["p_support"].notna()).sum())
    for i, r in table.iterrows():
        fit = fits.get(r["column"])
        if fit is None or r["verdict"] == "not testable":
            continue
        a2 = power_alpha(r["role"], decl, n_sec)
        kind = r["kind"]
        table.loc[i, "alpha_power"] = a2
        table.loc[i, "se_power"] = S.contrast_se(fit.model, primary_weights(fit.model, kind), fit.noise)[0]
        table.loc[i, "mde"] = S.claim_mde(fit.model, kind, a2, decl.power, fit.noise)
        for e in decl.effects:
            table.loc[i, f"power_at_{e:g}"] = S.claim_power(fit.model, kind, e, a2, fit.noise)
            table.loc[i, f"seeds_for_{e:g}"] = S.seeds_needed(fit.model, kind, e, a2, decl.power, fit.noise)


def seeds_text(n) -> str:
    return "–" if n is None or (isinstance(n, float) and math.isnan(n)) else \
        "unreachable" if not np.isfinite(n) else f"{int(n)}"


def verdict_table(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as a reader sees it (points, intervals as text)."""
    def ci(lo, hi):
        return "–" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:+.1f}, {hi:+.1f}]"

    out = []
    for r in table.itertuples():
        g = r._asdict()
        est = g.get("estimate", math.nan)
        out.append({
            "claim": f"{r.claim_id}: {r.claim}", "role": r.role, "probe": r.probe,
            "gain (points)": "–" if not np.isfinite(est) else f"{est:+.2f}",
            "model 95% CI": ci(g.get("ci_low", math.nan), g.get("ci_high", math.nan)),
            "bootstrap 95% CI": ci(g.get("boot_low", math.nan), g.get("boot_high", math.nan)),
            "p model": g.get("p_model", math.nan), "p sign-flip": g.get("p_perm", math.nan),
            "p Holm": g.get("p_adj", math.nan), "d": g.get("d", math.nan), "verdict": r.verdict})
    return pd.DataFrame(out)


def power_rows(table: pd.DataFrame, effects: Sequence[float]) -> pd.DataFrame:
    """Per claim: seeds now, se, the two-sided alpha, the smallest effect detected with the declared
    power at the present seeds, power at each effect and the seeds per (cell, arch) each needs."""
    out = []
    for r in table.itertuples():
        g = r._asdict()
        if not np.isfinite(g.get("mde", math.nan) if g.get("mde") is not None else math.nan):
            continue
        row = {"claim": r.claim_id, "role": r.role, "probe": r.probe, "seeds now": g.get("seeds_now"),
               "se incl. test set (points)": g.get("se_power"), "alpha (two-sided)": g.get("alpha_power"),
               "smallest effect detected (points)": g.get("mde")}
        for e in effects:
            row[f"power at {e:g} pt"] = g.get(f"power_at_{e:g}")
        for e in effects:
            row[f"seeds for {e:g} pt"] = seeds_text(g.get(f"seeds_for_{e:g}"))
        out.append(row)
    return pd.DataFrame(out)


def claim_verdicts(results: pd.DataFrame, column: str = "probe_acc", **kwargs) -> list[dict]:
    """The three claims on one column, judged by ``stats.judge`` (its default roles: (a) primary,
    (b1) and (b2) secondary): claim, verdict, evidence, p-values, mde, seeds needed."""
    from . import stats as S
    return S.claim_verdicts(results, column, **kwargs)


# --- the plan (seeds needed, where the variance is, the sequential design) -------------------------
def plan_lines(results: pd.DataFrame, decl: Declaration, source: str = "", n_boot: int = 400) -> list[str]:
    """What ``revtransfer sweep FILE --plan`` prints: one line per claim (role, estimate now, the
    smallest effect detected with the declared power, the seeds per cell and arch for each declared
    effect), where the variance of the primary claim is, and the group-sequential design."""
    from . import stats as S
    table = judge_declared(results, decl, n_boot=n_boot)
    lines = [f"plan from {source or 'the results'}: {len(S.study_rows(results, 'probe_acc'))} rows in complete "
             f"pairs; one-sided alpha {decl.alpha:g}, power {decl.power:.0%}, sesoi {decl.sesoi:g} points"]
    testable = table[table["verdict"] != "not testable"] if len(table) else table
    if testable.empty:
        return lines + ["no claim is testable yet: every (cell, arch) needs >= 2 seeds with both archs "
                        "(pass --pilot RESULTS to plan from another study's rows)"]
    for r in table.itertuples():
        g = r._asdict()
        if r.verdict == "not testable":
            lines.append(f"{r.role:<26} {r.claim_id:<11} not testable on these rows")
            continue
        need = ", ".join(f"{e:g} pt: {seeds_text(g.get(f'seeds_for_{e:g}'))}" for e in decl.effects)
        lines.append(f"{r.role:<26} {r.claim_id:<11} now {r.estimate:+.1f} (se {g['se_power']:.2f}, "
                     f"{r.seeds_now:g} seeds); "
                     f"detects >= {g['mde']:.1f} points at {decl.power:.0%} power (two-sided alpha "
                     f"{g['alpha_power']:.3g}); seeds per cell and arch for {need}")
    kind, column = parse_claim_id(decl.primary)
    fit = fit_column(results, column, decl.alpha, decl.sesoi, n_boot=50) if column in results else None
    if fit is not None:
        w = primary_weights(fit.model, kind)
        cells = _variance_cells(fit.model, w, decl, fit.noise)
        lines.append(f"where the variance of the primary claim ({decl.primary}) is (share of its variance; "
                     f"seeds per arch under the cheapest (Neyman) allocation):")
        for r in cells.itertuples():
            alloc = ", ".join(f"{e:g} pt: {seeds_text(getattr(r, f'ney_{i}'))}" for i, e in enumerate(decl.effects))
            lines.append(f"  corr {r.corr:g} fraction {r.fraction:g}: seed SD ViT {r.sd_vit:.2f}, "
                         f"RevViT {r.sd_rev:.2f}, "
                         f"test set {r.sd_test:.2f} points; {r.share:.0%} of the variance; {alloc}")
        lines += design_lines(fit.model, kind, decl)
    return lines


def primary_weights(model: S.EffectModel, kind: str) -> np.ndarray:
    if kind == "a":
        return model.weights_main()
    if kind == "b2":
        return model.b2_weights()
    cs = model.b1()
    worst = max(cs, key=lambda c: c.p_greater)
    return model.b1_weights()[worst.name]


def _variance_cells(model: S.EffectModel, w: np.ndarray, decl: Declaration, noise: str) -> pd.DataFrame:
    from . import stats as S
    g = model.groups.assign(w=w)
    tau2 = np.nan_to_num(g["tau2"].to_numpy(dtype=float)) if noise != "none" else np.zeros(len(g))
    g["contrib"] = g["w"] ** 2 * (g["var_model"] + tau2) / g["n"]
    neys = [S.neyman_seeds(model, w, e, 2 * decl.alpha, decl.power, noise) for e in decl.effects]
    for i, n in enumerate(neys):
        g[f"ney_{i}"] = n
    total = g["contrib"].sum()
    out = []
    for (corr, frac), c in g.groupby(["corr", "fraction"], sort=True):
        rev, base = c[c["rev"] == 1].iloc[0], c[c["rev"] == 0].iloc[0]
        row = {"corr": corr, "fraction": frac, "sd_vit": math.sqrt(base["var"]), "sd_rev": math.sqrt(rev["var"]),
               "sd_test": math.sqrt(float(np.mean(tau2[c.index]))) if noise != "none" else math.nan,
               "share": float(c["contrib"].sum() / total) if total > 0 else math.nan}
        for i in range(len(decl.effects)):
            row[f"ney_{i}"] = float(c[f"ney_{i}"].max())
        out.append(row)
    return pd.DataFrame(out)


# --- the group-sequential design -------------------------------------------------------------------
def primary_z(model: S.EffectModel, kind: str) -> tuple[float, S.Contrast]:
    """The one-sided z of the primary claim (for b1: the intersection-union's weakest pairwise contrast)."""
    from . import stats as S
    if kind == "a":
        c = model.main
    elif kind == "b2":
        c = model.b2()
    else:
        c = max(model.b1(), key=lambda x: x.p_greater)
    return S.z_from_t(c.t, c.df), c


def per_seed_variance(model: S.EffectModel, noise: str) -> np.ndarray:
    """Per group: the stratum's seed variance plus, with test noise "row", the binomial one (points^2)."""
    tau2 = np.nan_to_num(model.groups["tau2"].to_numpy(dtype=float)) if noise == "row" else 0.0
    return model.groups["var_model"].to_numpy(dtype=float) + tau2


def final_seeds(model: S.EffectModel, kind: str, decl: Declaration, noise: str) -> dict[tuple[float, float], int]:
    """Seeds per (corr, fraction) cell (both archs alike: a pair needs both) at the end of the design:
    max_seeds everywhere ("equal"), or proportional to the cell's share of the primary contrast's
    standard deviation with the heaviest cell at max_seeds ("neyman": n_c ~ sqrt(sum_arch c^2 v)),
    never below the seeds the cell has now."""
    g = model.groups.assign(a=primary_weights(model, kind) ** 2 * per_seed_variance(model, noise))
    a = g.groupby(["corr", "fraction"])["a"].sum()
    now = g.groupby(["corr", "fraction"])["n"].max()
    if decl.allocation == "equal" or not (a > 0).any():
        return {k: max(int(decl.max_seeds), int(now[k])) for k in a.index}
    s = np.sqrt(a)
    return {k: max(int(now[k]), 2, int(math.ceil(decl.max_seeds * s[k] / s.max() - 1e-9))) for k in a.index}


def info_fraction(weights: np.ndarray, variances: np.ndarray, n_now: np.ndarray, n_final: np.ndarray) -> float:
    """The primary contrast's information now over at the end: Var(final) / Var(now), with fixed
    per-group variances (balanced designs: seeds now / seeds at the end)."""
    w2v = np.asarray(weights) ** 2 * np.asarray(variances)
    v_now = float(np.sum(w2v / np.maximum(n_now, 1)))
    v_end = float(np.sum(w2v / np.maximum(n_final, 1)))
    return min(1.0, v_end / v_now) if v_now > 0 else math.nan


def design_lines(model: S.EffectModel, kind: str, decl: Declaration) -> list[str]:
    """The group-sequential design from these rows: seeds at the end, the looks' information
    fractions and efficacy boundaries, and where z stands now."""
    from . import stats as S
    if decl.max_seeds is None:
        return ["sequential design: none declared (claims.max_seeds is not set; --until-decided needs it)"]
    noise = "row" if np.isfinite(model.groups["tau2"]).all() else "none"
    fin = final_seeds(model, kind, decl, noise)
    keys = list(zip(model.groups["corr"], model.groups["fraction"]))
    w, v = primary_weights(model, kind), per_seed_variance(model, noise)
    n_now = model.groups["n"].to_numpy(dtype=float)
    n_end = np.array([fin[k] for k in keys], dtype=float)
    ts, n = [], n_now.copy()
    while True:  # one look per block: every cell below its final seeds gets one more
        t = info_fraction(w, v, n, n_end)
        if not ts or t > ts[-1] + 1e-12:
            ts.append(t)
        if (n >= n_end).all():
            break
        n = np.minimum(n + 1, n_end)
    z, c = primary_z(model, kind)
    b = S.gs_boundaries(ts, decl.alpha, decl.spending, final=True)
    runs_now = int(n_now.sum())
    se_end = S.contrast_se(model, w, noise, n_end)[0]
    pw = {e: S.gs_power(ts, b["boundaries"], e / se_end) for e in decl.effects}
    cells_end = ", ".join(f"corr {k[0]:g} fraction {k[1]:g}: {fin[k]}" for k in sorted(fin))
    return [f"sequential design ({decl.allocation} allocation, {decl.spending} spending, "
            f"one-sided alpha {decl.alpha:g},"
            f" max {decl.max_seeds} seeds): seeds per cell and arch at the end: {cells_end} "
            f"({int(n_end.sum()) - runs_now} more runs than the {runs_now} now)",
            "  looks at information fractions " + ", ".join(f"{t:.2f}" for t in ts) + "; efficacy boundaries z >= "
            + ", ".join(f"{x:.2f}" for x in b["boundaries"]),
            f"  at the end the primary contrast's se is {se_end:.2f} points; the design's power (any look, this "
            "variance): " + ", ".join(f"{e:g} pt: {p:.0%}" for e, p in pw.items()),
            f"  now (look 1 if no look was taken yet): z = {z:.2f} for {decl.primary} "
            f"({c.name}: {c.estimate:+.2f} points, "
            f"t {c.t:.2f}, df {c.df:.1f}) against the first boundary {b['boundaries'][0]:.2f}"]


def sequential_table(state: dict) -> pd.DataFrame:
    """The looks of a sequential.json as a table."""
    rows = []
    for lk in state.get("looks", []):
        rows.append({"look": lk.get("look"), "at": lk.get("at"), "rows": lk.get("rows"),
                     "seeds per cell (min-max)": f"{lk.get('seeds_min')}-{lk.get('seeds_max')}",
                     "information fraction": lk.get("info_fraction"), "gain (points)": lk.get("estimate"),
                     "z": lk.get("z"), "boundary z": lk.get("boundary_z"),
                     "alpha spent (cumulative)": lk.get("alpha_spent_cumulative"), "decision": lk.get("decision")})
    return pd.DataFrame(rows)


__all__ = [
    "DECLARATION_FILE", "SEQUENTIAL_FILE", "Declaration", "DeclarationError", "parse_claim_id", "column_label",
    "study_digest", "describe_changes", "read_declaration", "read_sequential", "declaration_of", "declaration_lines",
    "fit_column", "judge_declared", "verdict_table", "power_rows", "claim_verdicts", "plan_lines", "primary_weights",
    "primary_z", "final_seeds", "info_fraction", "design_lines", "sequential_table", "per_seed_variance",
    "power_alpha", "seeds_text"]
