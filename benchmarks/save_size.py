"""Bytes on disk of compressed-tensors exports vs the dense checkpoint, per storage format.

Prunes / quantises a model (data-free magnitude for the sparse formats, GPTQ / SparseGPT+GPTQ with a
small calibration for the quantised ones), exports each run, checks the round trip through
:func:`polyprune.formats.decompress`, and prints size ratios: whole checkpoint and the decoder Linear
weights alone (embeddings stay dense, and dominate small-vocabulary-heavy models such as Gemma-3).

    python benchmarks/save_size.py [--model embedded] [--dtype float32] [--nsamples 8] [--seqlen 128]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from _common import DATA, markdown_table

CASES = [  # (label, method, pattern, method options, export format)
    ("unstructured 50 %", "magnitude", "unstructured", {}, "sparse-bitmask"),
    ("2:4", "magnitude", "2:4", {}, "sparse-24-bitmask"),
    ("GPTQ int4 g128", "gptq", "unstructured", {"bits": 4, "group_size": 128}, "pack-quantized"),
    ("GPTQ int8 per row", "gptq", "unstructured", {"bits": 8, "group_size": -1}, "pack-quantized"),
    ("GPTQ int8 per row (int-quantized)", "gptq", "unstructured", {"bits": 8, "group_size": -1}, "int-quantized"),
    ("SparseGPT 2:4 + int4 g128", "sparsegpt-gptq", "2:4", {"bits": 4, "group_size": 128}, "pack-quantized"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--dtype", default=None, help="Export dtype for float tensors (default: the checkpoint's).")
    ap.add_argument("--cases", default=None, help="Comma-separated indices into the case list.")
    ap.add_argument("--verify", action="store_true", help="Decompress every export and compare with the run.")
    args = ap.parse_args()
    os.environ.setdefault("POLYPRUNE_PROGRESS", "0")
    import torch
    from polyprune.config import validate_config
    from polyprune.formats import decompress, export_compressed
    from polyprune.pipeline import run_prune
    from polyprune.run import load_run_or_model
    cal_file = DATA / "flores200" / "devtest" / "eng_Latn.txt"
    cases = [CASES[int(i)] for i in args.cases.split(",")] if args.cases else CASES
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for k, (label, method, pattern, opts, fmt) in enumerate(cases):
            cfg = validate_config({"model": args.model, "method": method, "pattern": pattern, "method_options": opts,
                                   "calibration": {"file": str(cal_file), "nsamples": args.nsamples,
                                                   "seqlen": args.seqlen}})
            run = run_prune(cfg, Path(d) / f"run{k}")
            rep = export_compressed(run, Path(d) / f"ct{k}", fmt, dtype=args.dtype)
            ok = "-"
            if args.verify:
                sd = load_run_or_model(str(run))[0].state_dict()
                ok = all(torch.equal(v.to(sd[n].dtype if args.dtype is None else v.dtype),
                                     sd[n] if args.dtype is None else sd[n].to(v.dtype)) for n, v in decompress(Path(d) / f"ct{k}"))
            rows.append((label, rep, ok))
            print(f"{label:36s} {rep['format']:18s} {rep['compressed_bytes'] / 2**20:8.1f} MiB / "
                  f"{rep['dense_bytes'] / 2**20:8.1f} MiB = {rep['ratio']:.3f}   decoder Linears "
                  f"{rep['matrix_ratio']:.3f}   round trip {ok}", flush=True)
    print(f"\n{args.model}, export dtype {args.dtype or 'as checkpoint'}")
    print(markdown_table(["run", "format", "on disk (MiB)", "dense (MiB)", "ratio", "decoder Linear ratio",
                          "round trip exact"],
                         [[label, rep["format"], f"{rep['compressed_bytes'] / 2**20:.1f}",
                           f"{rep['dense_bytes'] / 2**20:.1f}", f"{rep['ratio']:.3f}", f"{rep['matrix_ratio']:.3f}", ok]
                          for label, rep, ok in rows]))

if __name__ == "__main__":
    main()
