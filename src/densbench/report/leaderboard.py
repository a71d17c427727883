"""Leaderboards as data, rendered as Markdown or as a LaTeX table for a paper.

A leaderboard has a row per dataset (or per configuration) and a column per method; each cell is a
mean with its standard error (or a published figure with its ± as printed), and the best cell of a
row is marked. Rendering is separate from content, so the Markdown report and the .tex file show
the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# LaTeX's special characters outside math mode, and what stands for them in text
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


@dataclass(frozen=True)
class Cell:
    """A mean and its ± (None: printed without one); best marks the row's best cell."""

    mean: float
    pm: float | None = None
    best: bool = False

    def text(self, digits: int) -> tuple[str, str | None]:
        """(mean, ±) as printed with `digits` decimals ('-' for a missing value)."""
        if self.mean is None or not math.isfinite(self.mean):
            return "-", None
        return f"{self.mean:.{digits}f}", (None if self.pm is None else f"{self.pm:.{digits}f}")


@dataclass
class Leaderboard:
    """Rows of cells under column names, with a caption and notes that say how to read them."""

    caption: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    notes: str = ""
    digits: int = 2
    label: str = "tab:densbench"


def contested(values: list[float | None]) -> bool:
    """Whether a best among these means anything: at least two scored values (an infinite score is a rival, a
    missing or NaN one is not), so a lone value is best of nothing."""
    return sum(v is not None and not math.isnan(v) for v in values) >= 2


def best_of(values: list[float], digits: int, lower: bool = True) -> list[bool]:
    """Which values are the best at the printed precision (ties all best; missing values never; nothing without
    a rival: contested)."""
    if not contested(values):
        return [False] * len(values)
    shown = [round(v, digits) if v is not None and math.isfinite(v) else None for v in values]
    finite = [v for v in shown if v is not None]
    if not finite:
        return [False] * len(values)
    best = min(finite) if lower else max(finite)
    return [v is not None and v == best for v in shown]


def to_markdown(board: Leaderboard) -> str:
    """The leaderboard as a Markdown table (best cells in bold), caption above and notes below."""
    lines = [board.caption, "", "| " + " | ".join([board.row_header, *board.columns]) + " |",
             "|" + "---|" * (len(board.columns) + 1)]
    for name, cells in board.rows:
        out = []
        for c in cells:
            mean, pm = c.text(board.digits)
            s = mean if pm is None else f"{mean} ± {pm}"
            out.append(f"**{s}**" if c.best else s)
        lines.append("| " + " | ".join([name, *out]) + " |")
    return "\n".join(lines + (["", board.notes] if board.notes else [])) + "\n"


def tex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped (for names, captions and notes)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text)).replace("±", r"$\pm$").replace("−", "$-$")


def to_latex(board: Leaderboard) -> str:
    """The leaderboard as a LaTeX table environment (plain tabular, no packages beyond LaTeX itself)."""
    spec = "l" + "r" * len(board.columns)
    head = " & ".join(tex_escape(h) for h in [board.row_header, *board.columns])
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\caption{{{tex_escape(board.caption)}}}",
             rf"\label{{{board.label}}}", rf"\begin{{tabular}}{{{spec}}}", r"\hline", head + r" \\", r"\hline"]
    for name, cells in board.rows:
        out = []
        for c in cells:
            mean, pm = c.text(board.digits)
            body = mean if pm is None else f"{mean} \\pm {pm}"
            body = "-" if mean == "-" else (rf"$\mathbf{{{body}}}$" if c.best else f"${body}$")
            out.append(body)
        lines.append(" & ".join([tex_escape(name), *out]) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    if board.notes:
        lines += [r"\par\smallskip", rf"\parbox{{\linewidth}}{{\footnotesize {tex_escape(board.notes)}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def mean_se(values: list[float | None]) -> tuple[float, float | None]:
    """Mean and standard error over every value; nan (no figure) where any is missing or not finite, as a mean
    of the others would pass for all of them; no error from one value."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals or len(vals) < len(values):
        return float("nan"), None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var / len(vals))
