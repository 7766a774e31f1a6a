"""``polyprune run GRID.yaml``: execute an experiment grid (resumable; local pool or Ray)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import app, examples


@app.command("run", epilog=examples("polyprune run recipes/kurz2025-small.yaml --dry-run",
                                    "polyprune run recipes/kurz2025-small.yaml --workers 2",
                                    "polyprune run recipes/kim2024-small.yaml --in-process --out runs/kim"))
def run_cmd(
    grid: Path = typer.Argument(..., help="Grid YAML (see recipes/)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the cells (default: runs/<grid name>)."),
    workers: int = typer.Option(1, "--workers", "-w", help="Cells run in parallel, each in its own process."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run cells as Ray tasks: auto, local or ADDRESS."),
    in_process: bool = typer.Option(False, "--in-process", help="Run cells one by one in this process, "
                                    "loading each model once (fastest for small grids)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local data folder (layout as ../shared/data; 'hub' for the Hugging Face hub). Default: $POLYPRUNE_DATA_DIR, else ./shared/data or ../shared/data when present, else the hub."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the report when all cells are done."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells and exit."),
) -> None:
    """Run every cell of a grid; finished cells are reused, unfinished ones redone. Exit 1 if a cell failed."""
    from ..errors import UserError
    from ..grid import default_out, is_done, load_grid, run_grid
    if workers < 1:
        raise UserError(f"--workers {workers}: give at least 1")
    if ray and in_process:
        raise UserError("--ray and --in-process exclude each other: choose one")
    g = load_grid(grid)
    out = out or default_out(grid, g.name)
    if dry_run:
        for c in g.cells:
            state = "done" if is_done(out / c.dirname) else "todo"
            typer.echo(f"{state}\t{c.dirname}\t{c.title}")
        typer.echo(f"{len(g.cells)} cells")
        return
    summary = run_grid(g, out, workers=workers, ray=ray, data_dir=str(data_dir) if data_dir else None,
                       in_process=in_process)
    typer.echo(f"{out}: {summary.done} done, {summary.skipped} reused, {len(summary.failed)} failed "
               f"of {summary.total} cells in {summary.seconds:.0f}s")
    for name, err in summary.failed:
        typer.echo(f"  failed {name}: {err}", err=True)
    if report and summary.done + summary.skipped > 0:
        from ..report import write_report
        try:
            paths = write_report(out)
            typer.echo(f"report: {paths['dir']}")
        except UserError as e:
            typer.echo(f"no report: {e}", err=True)
    if summary.failed:
        raise typer.Exit(1)
