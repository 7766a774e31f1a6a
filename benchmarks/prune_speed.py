"""Prune speed and memory on the embedded model: ratios measured in one run.

For Wanda and SparseGPT (50 % unstructured) on N × L calibration tokens (default 64 × 512, from
FLORES eng_Latn calibration lines): wall time ÷ one dense forward over the same tokens (full model,
and decoder layers only), and peak RSS ÷ fp32 model size. Each method runs in a fresh
subprocess so peak RSS is its own. The machine is shared: read ratios, not seconds.

    python benchmarks/prune_speed.py [--nsamples 64 --seqlen 512 --data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _common import run_child


def calibration(tok, nsamples, seqlen, data_dir):
    from polyprune.calibration import build_calibration
    cal = build_calibration("text", tok, langs=["eng_Latn"], nsamples=nsamples, seqlen=seqlen, seed=0,
                            data_dir=data_dir)
    return [s.input_ids for s in cal.samples]


def child(method: str, nsamples: int, seqlen: int, data_dir: str) -> dict:
    import torch
    import polyprune as pp
    from polyprune.model import find_layers, model_size_bytes
    from polyprune.progress import peak_rss_bytes
    torch.manual_seed(0)
    model, tok = pp.load_model("embedded")
    rss_loaded = peak_rss_bytes()
    cal = calibration(tok, nsamples, seqlen, data_dir)
    out = {"method": method, "model_bytes": model_size_bytes(model), "rss_after_load": rss_loaded}
    if method == "dense":
        ids = torch.stack(cal)
        with torch.no_grad():
            t0 = time.perf_counter()
            for row in ids:
                model(row.unsqueeze(0), use_cache=False)
            out["forward_s"] = time.perf_counter() - t0
            # decoder layers only: the same per-layer calls the pruner makes
            from polyprune.collect import capture, run_layer
            path, layers = find_layers(model)
            entries = capture(model, pp.Calibration([pp.Sample(r) for r in ids]), layers=layers)
            t0 = time.perf_counter()
            for i, layer in enumerate(layers):
                for e in entries:
                    e.hidden = run_layer(layer, e, i)
            out["decoder_forward_s"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        masks = pp.prune(model, cal, method=method, sparsity=0.5)
        out["prune_s"] = time.perf_counter() - t0
        out["phases"] = masks.record["timings_s"]
        out["achieved_sparsity"] = masks.record["achieved_sparsity"]
    out["peak_rss"] = peak_rss_bytes()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--data-dir", default=os.environ.get("POLYPRUNE_DATA_DIR", "../shared/data"))
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.nsamples, a.seqlen, a.data_dir)))
        return
    res = {}
    for m in ["dense", *a.methods.split(",")]:
        res[m] = run_child([sys.executable, __file__, "--child", m, "--nsamples", str(a.nsamples), "--seqlen",
                            str(a.seqlen), "--data-dir", a.data_dir], m)
    d = res["dense"]
    size = d["model_bytes"]
    print(f"embedded Gemma-3-270M, {a.nsamples} x {a.seqlen} calibration tokens, 50% unstructured, "
          f"{os.cpu_count()} CPUs, torch threads default")
    print(f"dense forward (full model) {d['forward_s']:.1f}s; decoder layers only {d['decoder_forward_s']:.1f}s; "
          f"fp32 model {size / 2**20:.0f} MiB")
    print(f"{'method':<10} {'÷ full fwd':>10} {'÷ decoder fwd':>14} {'peak RSS ÷ model':>17} {'sparsity':>9}")
    for m in a.methods.split(","):
        r = res[m]
        print(f"{m:<10} {r['prune_s'] / d['forward_s']:>10.2f} {r['prune_s'] / d['decoder_forward_s']:>14.2f} "
              f"{r['peak_rss'] / size:>17.2f} {r['achieved_sparsity']:>9.4f}")
    print(f"{'dense':<10} {'':>10} {'':>14} {d['peak_rss'] / size:>17.2f}  (load + forward)")


if __name__ == "__main__":
    main()
