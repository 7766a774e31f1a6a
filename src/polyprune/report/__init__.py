"""Paper-style reports from evaluated cells: tables (CSV, Markdown, LaTeX) and figures.

One table per task: rows = model × method × sparsity × calibration (seeds averaged), columns =
evaluation languages + average; per model, the best value of each column among the rows compared
with the baseline is bold and ``†`` marks
a value significantly different from the model's baseline (the dense cell, or ``baseline=``) at
p < 0.1 by the evaluation suite's paired bootstrap (with several seeds: significant in every seed).
Figures: per-language bars of the primary metric against the calibration, and heatmaps of
calibration × evaluation language (each cell: value and its change vs the baseline in %, coloured
by that change, red = worse); languages are named in English in every figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..run import staged_dir
from .collect import (ANALYSIS_TABLES, DAGGER, LABEL_KEYS, Entry, Row, Table, build_tables, collect,
                      resolve_runs_dir, table_key)
from .figures import (figure_bars, figure_heatmap, heatmap_changes, heatmap_scale, lang_label,
                      relative_change)
from .render import fmt, table_csv, table_latex, table_markdown, table_rich

__all__ = ["ANALYSIS_TABLES", "DAGGER", "LABEL_KEYS", "Entry", "Row", "Table", "build_tables", "collect",
           "figure_bars", "figure_heatmap", "fmt", "heatmap_changes", "heatmap_scale", "lang_label",
           "relative_change", "resolve_runs_dir", "table_csv", "table_key", "table_latex", "table_markdown",
           "table_rich", "write_report"]


def write_report(source: str | Path, out: str | Path | None = None, baseline: str | None = None,
                 figures: bool = True, significance: bool = True) -> dict:
    """Tables (CSV, Markdown, LaTeX) + figures into ``out`` (default ``<runs>/report``), atomically."""
    root = resolve_runs_dir(source)
    tables = build_tables(collect(root), baseline, significance)
    out = Path(out) if out is not None else root / "report"
    written: dict[str, Any] = {"dir": out, "tables": {}, "figures": []}
    with staged_dir(out, force=True) as tmp:
        md = [f"# Report: {root.name}\n"]
        for t in tables:
            (tmp / f"{t.task}.csv").write_text(table_csv(t), encoding="utf-8")
            (tmp / f"{t.task}.md").write_text(table_markdown(t), encoding="utf-8")
            (tmp / f"{t.task}.tex").write_text(table_latex(t), encoding="utf-8")
            written["tables"][t.task] = {ext: out / f"{t.task}.{ext}" for ext in ("csv", "md", "tex")}
            md.append(f"## {t.task}\n\n{table_markdown(t)}")
            if figures:
                for model in dict.fromkeys(r.labels["model"] for r in t.rows):
                    for p in figure_bars(t, model, tmp / "figures") + figure_heatmap(t, model, tmp / "figures"):
                        written["figures"].append(out / "figures" / p.name)
                        if p.suffix == ".png":
                            md.append(f"![{p.stem}](figures/{p.name})\n")
        (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
    written["tables_obj"] = tables
    return written
