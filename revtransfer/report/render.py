"""Tables as Markdown, CSV and LaTeX (no extra dependencies), written atomically."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from revtransfer.atomic import atomic_write_text


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def latex(df: pd.DataFrame, caption: str = "") -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * len(df.columns) + "}", r"\toprule",
             " & ".join(esc(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(_fmt(v)) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + esc(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out_dir: Path, name: str, caption: str = "") -> str:
    """Write NAME.md/.csv/.tex; returns the Markdown for the index."""
    md = markdown(df)
    atomic_write_text(out_dir / f"{name}.md", (f"{caption}\n\n" if caption else "") + md)
    atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=False))
    atomic_write_text(out_dir / f"{name}.tex", latex(df, caption))
    return md
