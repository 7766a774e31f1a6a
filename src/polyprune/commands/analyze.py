"""``polyprune analyze RUN… --what NAME``: look inside pruned models (tables + figures)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import app, examples
from .listing import choices


@app.command(epilog=examples(
    "polyprune analyze runs/w-en runs/w-sw --what magnitudes,mask_iou --out runs/analysis   # runs pruned with "
    "--keep-stats",
    "polyprune analyze runs/w50 --what snr,lape --lang eng,fra,zho,swh --nsentences 16",
    "polyprune analyze runs/w50 --what restoration --restore first,last --nsentences 16"))
def analyze(
    runs: list[Path] = typer.Argument(..., help="Run folder(s) written by `polyprune prune`."),
    what: list[str] = typer.Option(..., "--what", "-w", help=f"Analyses: {choices('analyses')}, or all; repeat or "
                                   "comma-separate (`polyprune list analyses`; magnitudes needs runs pruned with "
                                   "--keep-stats, mask_iou 2+ runs)."),
    lang: Optional[list[str]] = typer.Option(None, "--lang", help="Evaluation languages (default: the runs' "
                                             "calibration languages); repeat or comma-separate."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (required for several runs)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local data folder (layout as ../shared/data; 'hub' for the Hugging Face hub). Default: $POLYPRUNE_DATA_DIR, else ./shared/data or ../shared/data when present, else the hub."),
    nsentences: int = typer.Option(64, "--nsentences", help="FLORES evaluation sentences per language."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sentences per forward pass."),
    beta: float = typer.Option(0.3, "--beta", help="magnitudes: top/bottom fraction of features."),
    topk: int = typer.Option(20, "--topk", help="magnitudes: top-k dimensions to list and plot."),
    module: Optional[str] = typer.Option(None, "--module", help="magnitudes: module whose inputs are the "
                                         "features (e.g. mlp.down_proj; default: the layer's first Linear)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="lsar: subspace rank (default: languages − 1)."),
    activation: str = typer.Option("product", "--activation", help="lape: 'product' (input of the FFN output "
                                   "projection: the gated product in GLU blocks) or 'act' (activation function "
                                   "output, as Tang et al.'s code)."),
    restore: str = typer.Option("first,last,first+last,each", "--restore",
                                help="restoration: layer sets, e.g. first,last,first+last,each,3,0+5."),
    device: Optional[str] = typer.Option("cpu", "--device", help="Device: cpu (default), cuda, cuda:1."),
    dtype: Optional[str] = typer.Option("float32", "--dtype", help="float32 (default), bfloat16, float16."),
) -> None:
    """Analyse pruned runs: write CSV/JSON tables and PNG/PDF figures."""
    from ..analysis import Options, analyze as run_analyses
    from ..errors import UserError
    from .prune import split_langs
    names = split_langs(what)
    if nsentences <= 0 or batch_size <= 0:
        raise UserError("--nsentences and --batch-size must be positive")
    if not 0 < beta <= 0.5:
        raise UserError(f"--beta {beta} is outside (0, 0.5]: give a fraction such as 0.3")
    opts = Options(langs=split_langs(lang), data_dir=str(data_dir) if data_dir else None, nsentences=nsentences,
                   batch_size=batch_size, beta=beta, topk=topk, module=module, rank=rank, activation=activation,
                   restore=restore, device=device, dtype=dtype)
    results = run_analyses([str(r) for r in runs], names if names != ["all"] else "all", out, opts)
    where = out if out is not None else runs[0]
    for name, summary in results.items():
        typer.echo(f"{name}: written to {where} ({summary['seconds']}s)")
