"""``polyprune demo``: the calibration-language × evaluation-language perplexity table, offline."""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Optional

import typer

from ..cli import app, examples
from ..demo import DEMO_EVAL_LINES, DEMO_NSAMPLES, DEMO_SEQLEN
from ..progress import fmt_duration


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children: the cost of a run,
    which, unlike wall time, does not grow when other work shares the cores."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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
    t0, c0 = time.perf_counter(), cpu_seconds()
    rep = run_demo(out, data_dir, model, nsamples, seqlen, limit)
    console = Console()
    if rep["table"] is not None:
        console.print(table_rich(rep["table"], title="Perplexity per evaluation language (lower is better)"))
    s = rep["summary"]
    figs = [p for p in rep["figures"] if p.suffix == ".png"]
    typer.echo(f"{s.done} cells run, {s.skipped} reused, {len(s.failed)} failed in "
               f"{fmt_duration(time.perf_counter() - t0)} wall, {cpu_seconds() - c0:.0f} CPU-s "
               f"({os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f})")
    typer.echo(f"report: {rep['dir'] / 'report.md'}")
    for p in figs:
        typer.echo(f"figure: {p}")
    if s.failed:
        for name, err in s.failed:
            typer.echo(f"  failed {name}: {err}", err=True)
        raise typer.Exit(1)
