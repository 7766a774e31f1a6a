"""``polyprune eval``: evaluate a run folder (base model + masks) or a model, per language."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from ..cli import app, examples
from .listing import choices
from .prune import parse_options, split_langs

log = logging.getLogger(__name__)


def deprecated_lm_eval_task(task: str, name: str) -> str:
    """``--task lm-eval --lm-eval-task NAME`` → ``lm-eval:NAME`` (the one spelling), with a warning."""
    from ..errors import UserError
    if task not in ("lm-eval", f"lm-eval:{name}"):
        raise UserError(f"--lm-eval-task {name} goes with --task lm-eval; write --task lm-eval:{name} instead")
    log.warning("--lm-eval-task is deprecated: write --task lm-eval:%s", name)
    return f"lm-eval:{name}"


@app.command("eval", epilog=examples(
    "polyprune eval runs/w50 --task perplexity --lang eng,fra,zho,swh --limit 50",
    "polyprune eval runs/w50 --task xnli --lang en,fr,sw --limit 100",
    "polyprune eval runs/w50 --task lm-eval:arc_easy --limit 50   # hub data: needs network"))
def eval_cmd(
    target: str = typer.Argument(..., help="Run folder (results go to RUN/results/) or model (needs --out)."),
    task: str = typer.Option(..., "--task", "-t", help=f"{choices('tasks')}; append -lrp2 for the LRP2 baseline "
                                                       "(e.g. xnli-lrp2). `polyprune list tasks`."),
    lang: Optional[list[str]] = typer.Option(None, "--lang", "-l", help="Language(s), FLORES or ISO codes; "
                                                                        "repeat or comma-separate (default: the task's)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Examples per language (default: all)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local data folder (layout as ../shared/data; 'hub' for the Hugging Face hub). Default: $POLYPRUNE_DATA_DIR, else ./shared/data or ../shared/data when present, else the hub."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results folder (required for a bare model)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed (demonstrations, samples, bootstrap)."),
    lm_eval_task: Optional[str] = typer.Option(None, "--lm-eval-task", help="Deprecated: use --task "
                                                "lm-eval:<name>."),
    lrp2: Optional[str] = typer.Option(None, "--lrp2", help="Apply LRP2: 'auto' (search a,b on XNLI dev) or 'a,b'."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Task option key=value (repeatable), "
                                                                            "e.g. norm=mean, k=4, max_new_tokens=64."),
    dtype: Optional[str] = typer.Option(None, help="float32 (CPU default), bfloat16, float16."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda … (default: auto)."),
) -> None:
    """Evaluate per language; writes results/<task>.json (metrics, per-example scores, settings, versions)."""
    from ..data import require_task_data
    require_task_data(task, data_dir)  # before the heavy imports: offline failures in a second or two
    from ..evaluate import run_eval
    opts = parse_options(option or [])
    if lm_eval_task:
        task = deprecated_lm_eval_task(task, lm_eval_task)
    if lrp2:
        opts["lrp2"] = lrp2
    path = run_eval(target, task, split_langs(lang) or None, out, data_dir, limit, seed, batch_size, dtype, device,
                    **opts)
    import json
    res = json.loads(path.read_text(encoding="utf-8"))
    p = res["primary"]
    per = "  ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in p["per_lang"].items())
    avg = p["average"]
    typer.echo(f"{path}: {p['metric']} {per}" + (f"  avg={avg:.4g}" if isinstance(avg, (int, float)) else ""))
