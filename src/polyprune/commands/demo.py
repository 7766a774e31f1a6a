"""``polyprune demo``: the calibration-language × evaluation-language perplexity table, offline."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..cli import app, examples
from ..demo import DEMO_EVAL_LINES, DEMO_NSAMPLES, DEMO_SEQLEN


@app.command("demo", epilog=examples("polyprune demo", "polyprune demo --nsamples 4 --seqlen 128 --limit 10 "
                                     "--out demo-small", "polyprune demo --data-dir ../shared/data --out demo-runs"))
def demo_cmd(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local data folder (layout as ../shared/data; 'hub' for the Hugging Face hub). Default: $POLYPRUNE_DATA_DIR, else ./shared/data or ../shared/data when present, (the demo needs local FLORES-200)."),
    out: Path = typer.Option(Path("demo-runs"), "--out", help="Folder for the demo's cells and report."),
    model: str = typer.Option("embedded", "--model", "-m", help="Model (default: the embedded Gemma-3-270M)."),
    nsamples: int = typer.Option(DEMO_NSAMPLES, "--nsamples", help="Calibration windows per language."),
    seqlen: int = typer.Option(DEMO_SEQLEN, "--seqlen", help="Tokens per calibration window."),
    limit: int = typer.Option(DEMO_EVAL_LINES, "--limit", help="Held-out FLORES sentences per evaluation language."),
) -> None:
    """Dense, magnitude and Wanda 50 % calibrated on eng/fra/zho/swh; perplexity per language.
    Rerunning reuses finished cells."""
    from rich.console import Console
    from ..demo import run_demo
    from ..report import table_rich
    t0 = time.perf_counter()
    rep = run_demo(out, data_dir, model, nsamples, seqlen, limit)
    console = Console()
    if rep["table"] is not None:
        console.print(table_rich(rep["table"], title="Perplexity per evaluation language (rows: method · "
                                                     "calibration language) — lower is better"))
    s = rep["summary"]
    figs = [p for p in rep["figures"] if p.suffix == ".png"]
    typer.echo(f"{s.done} cells run, {s.skipped} reused, {len(s.failed)} failed in {time.perf_counter() - t0:.0f}s")
    typer.echo(f"report: {rep['dir'] / 'report.md'}")
    for p in figs:
        typer.echo(f"figure: {p}")
    if s.failed:
        for name, err in s.failed:
            typer.echo(f"  failed {name}: {err}", err=True)
        raise typer.Exit(1)
