"""``polyprune export RUN --out DIR``: a checkpoint other tools load (or a polyprune archive)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import app


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder written by `polyprune prune`."),
    format: str = typer.Option("auto", "--format", help="auto (dense, or pack-quantized for quantised runs), "
                               "dense (plain Hugging Face checkpoint), pack-quantized, int-quantized "
                               "(compressed-tensors W4A16/W8A16), sparse-bitmask, sparse-24-bitmask "
                               "(polyprune archives, not loadable by transformers/vLLM)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Cast float tensors, e.g. bfloat16 (default: keep)."),
    out: Path = typer.Option(..., "--out", help="Folder for the exported checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Export a pruned and/or quantised run: a checkpoint transformers and vLLM load, with a model card."""
    from ..formats import export_compressed
    rep = export_compressed(run, out, format, dtype=dtype, force=force)
    typer.echo(f"{out}: {rep['format']}, {rep['on_disk_bytes'] / 2**20:.1f} MiB of weights on disk = "
               f"{rep['ratio_fp32']:.3f}× the dense fp32 size ({rep['dense_fp32_bytes'] / 2**20:.1f} MiB), "
               f"{rep['ratio_bf16']:.3f}× bf16 ({rep['dense_bf16_bytes'] / 2**20:.1f} MiB)")
    for loader, line in rep["load"].items():
        typer.echo(f"  {loader}: {line}")
