"""``polyprune export RUN --format compressed-tensors --out DIR``: a serving-ready checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import app


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder written by `polyprune prune`."),
    format: str = typer.Option("compressed-tensors", "--format", help="compressed-tensors (pick by run), "
                               "sparse-bitmask, sparse-24-bitmask, pack-quantized, int-quantized, dense."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Cast float tensors, e.g. bfloat16 (default: keep)."),
    out: Path = typer.Option(..., "--out", help="Folder for the compressed checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Save a pruned and/or quantised run in the compressed-tensors format (vLLM, transformers)."""
    from ..formats import export_compressed
    rep = export_compressed(run, out, format, dtype=dtype, force=force)
    typer.echo(f"{out}: {rep['format']}, {rep['compressed_bytes'] / 2**20:.1f} MiB on disk vs "
               f"{rep['dense_bytes'] / 2**20:.1f} MiB dense ({rep['ratio']:.3f}×; pruned/quantised matrices "
               f"{rep['matrix_ratio']:.3f}×)")
