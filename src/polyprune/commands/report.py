"""``polyprune report``: tables (CSV, Markdown, LaTeX) and figures from evaluated cells."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import app, examples


@app.command("report", epilog=examples("polyprune report demo-runs", "polyprune report runs/kurz2025-small "
                                       "--baseline 'wanda · 0.5 · eng'", "polyprune report recipes/kim2024-small.yaml "
                                       "--no-figures --quiet"))
def report_cmd(
    source: Path = typer.Argument(..., help="A grid's runs folder, a grid YAML, or any folder of run folders."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Row to test against (default: the dense "
                                           "cell of each model), e.g. 'wanda · 0.5 · eng' or a cell folder name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: <runs>/report)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Also draw bar charts and heatmaps."),
    show: bool = typer.Option(True, "--show/--quiet", help="Print the tables."),
) -> None:
    """Paper-style tables: rows = model × method × sparsity × calibration, columns = languages + average;
    best in bold, † = p < 0.1 against the baseline."""
    from rich.console import Console
    from ..report import table_rich, write_report
    rep = write_report(source, out, baseline, figures)
    if show:
        console = Console()
        for t in rep["tables_obj"]:
            console.print(table_rich(t))
    typer.echo(f"report: {rep['dir'] / 'report.md'} ({len(rep['tables'])} tables, "
               f"{sum(1 for p in rep['figures'] if p.suffix == '.png')} figures)")
