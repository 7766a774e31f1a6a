"""Our Wanda / SparseGPT vs llm-compressor's WandaPruningModifier / SparseGPTModifier.

Fixed workload: the embedded model (Gemma-3-270M, fp32, CPU), 64 × 512 calibration tokens (seeded
windows of FLORES-200 English devtest, or seeded random tokens without the data), 50 % unstructured.
Every configuration runs in a fresh subprocess with the same token tensor; we time the pruning call
only (model loading excluded) and read the process's peak RSS; then achieved sparsity of the decoder
Linear weights, the zero fraction of the input embedding (tied to the output head in Gemma-3: it must
stay dense) and perplexity on held-out windows. llm-compressor needs transformers ≤ 5.17, so it runs
from its own virtual environment (``--peer-python``; made with ``python -m venv --system-site-packages
V && V/bin/pip install -c /tmp/c.txt llmcompressor``); without one the script reports it and compares
nothing. Timings on a shared, noisy machine: read ratios, not absolute seconds.

    python benchmarks/compare_peers.py [--peer-python /tmp/llmc-venv/bin/python] [--nsamples 64] [--seqlen 512]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA, markdown_table, peak_rss, run_child


def prepare(folder: Path, nsamples: int, seqlen: int, eval_windows: int, out: Path) -> str:
    """Calibration ids [n, L] and held-out perplexity ids, saved for every child."""
    import torch
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    text = DATA / "flores200" / "devtest" / "eng_Latn.txt"
    if text.is_file():
        from polyprune.calibration import from_text_file
        cal = from_text_file(text, tok, nsamples, seqlen, seed=0)
        ids = torch.stack([s.input_ids for s in cal.samples])
        held = (DATA / "flores200" / "devtest" / "deu_Latn.txt").read_text(encoding="utf-8")
        ev = tok(held, return_tensors="pt")["input_ids"][0]
        source = "FLORES eng_Latn (calibration), deu_Latn (perplexity)"
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, len(tok), (nsamples, seqlen), generator=g)
        ev = torch.randint(3, len(tok), (eval_windows * seqlen,), generator=g)
        source = "random tokens"
    ev = ev[: eval_windows * seqlen].reshape(eval_windows, seqlen)
    torch.save({"calib": ids, "eval": ev}, out)
    return source


def decoder_linear_sparsity(model) -> float:
    from polyprune.model import prunable_weights
    zeros = total = 0
    for m in prunable_weights(model).values():
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    return zeros / total


def perplexity(model, ev) -> float:
    import math
    import torch
    nll = n = 0.0
    with torch.no_grad():
        for row in ev:
            out = model(input_ids=row.unsqueeze(0), labels=row.unsqueeze(0))
            nll += float(out.loss) * (row.numel() - 1)
            n += row.numel() - 1
    return math.exp(nll / n)


def child(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    data = torch.load(args.data)
    model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32).eval()
    base = peak_rss()
    ids = data["calib"]
    if args.impl == "dense":  # one dense pass through the decoder layers over the same tokens
        import polyprune as pp
        from polyprune.collect import capture, run_layer
        from polyprune.model import find_layers
        layers = find_layers(model)[1]
        with torch.no_grad():
            entries = capture(model, pp.Calibration([pp.Sample(r) for r in ids]), layers=layers)
            t0 = time.perf_counter()
            for i, layer in enumerate(layers):
                for e in entries:
                    e.hidden = run_layer(layer, e, i)
            dt = time.perf_counter() - t0
        print(json.dumps({"seconds": dt, "peak": peak_rss(), "base": base}))
        return
    if args.impl == "ours":
        import polyprune as pp
        t0 = time.perf_counter()
        pp.prune(model, ids, args.method, 0.5)
        dt = time.perf_counter() - t0
    else:
        from datasets import Dataset
        from llmcompressor import oneshot
        if args.method == "wanda":
            from llmcompressor.modifiers.pruning import WandaPruningModifier as Mod
        else:
            from llmcompressor.modifiers.pruning import SparseGPTModifier as Mod
        ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
        # a bare "lm_head" does not match in llm-compressor 0.14: it then prunes the output head, which
        # Gemma-3 ties to the input embedding (most of its parameters), and its perplexity suffers
        recipe = Mod(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=["re:.*lm_head"])
        t0 = time.perf_counter()
        oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=ids.shape[0],
                max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
        dt = time.perf_counter() - t0
    peak = peak_rss()
    emb = model.get_input_embeddings().weight
    print(json.dumps({"seconds": dt, "peak": peak, "base": base, "sparsity": decoder_linear_sparsity(model),
                      "embedding_zeros": float((emb == 0).float().mean()),
                      "ppl": perplexity(model, data["eval"])}))


def peer_child(python: str, impl: str, method: str, folder: Path, data: Path) -> dict:
    cmd = [python, __file__, "--child", "--impl", impl, "--method", method, "--dir", str(folder), "--data", str(data)]
    return run_child(cmd, f"{impl} {method}", strict=False, cwd=tempfile.gettempdir())  # peers may write files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--peer-python", default=os.environ.get("LLMCOMPRESSOR_PYTHON", "/tmp/llmc-venv/bin/python"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from polyprune.model import resolve_model_path
    folder = Path(resolve_model_path(args.model))
    peer_ok = Path(args.peer_python).exists() and subprocess.run(
        [args.peer_python, "-c", "import llmcompressor"], capture_output=True, cwd=tempfile.gettempdir()).returncode == 0
    if not peer_ok:
        print(f"llm-compressor is not available at {args.peer_python}: it pins transformers<=5.17 and "
              f"compressed-tensors 0.19, so it is installed in its own venv (see the module docstring)")
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "tokens.pt"
        source = prepare(folder, args.nsamples, args.seqlen, args.eval_windows, data)
        rows = []
        dense = peer_child(sys.executable, "dense", "none", folder, data)
        print("one dense decoder forward", dense, flush=True)
        for method in args.methods.split(","):
            ours = peer_child(sys.executable, "ours", method, folder, data)
            peer = peer_child(args.peer_python, "peer", method, folder, data) if peer_ok else {"error": "not installed"}
            rows.append((method, ours, peer))
            print(method, "ours", ours, "llm-compressor", peer, flush=True)
    print(f"\n{args.model}, {args.nsamples}×{args.seqlen} tokens ({source}), 50 % unstructured, "
          f"torch threads {os.environ.get('BENCH_THREADS', '2')}")
    fwd = dense.get("seconds", float("nan"))
    print(f"one dense forward through the decoder layers over the same tokens: {fwd:.1f} s")
    table = []
    for method, o, p in rows:
        if "error" in o or "error" in p:
            table.append([method, f"{o.get('seconds', float('nan')):.0f}", p.get("error", "")] + [""] * 8)
            continue
        table.append([method, f"{o['seconds']:.0f}", f"{p['seconds']:.0f}", f"{o['seconds'] / p['seconds']:.2f}",
                      f"{o['seconds'] / fwd:.2f}", f"{p['seconds'] / fwd:.2f}",
                      f"{o['peak'] / 2**20:.0f}", f"{p['peak'] / 2**20:.0f}",
                      f"{o['sparsity']:.4f} / {p['sparsity']:.4f}",
                      f"{o['embedding_zeros']:.4f} / {p['embedding_zeros']:.4f}", f"{o['ppl']:.2f} / {p['ppl']:.2f}"])
    print(markdown_table(["method", "ours time (s)", "llm-compressor time (s)", "time ratio ours ÷ theirs",
                          "ours ÷ dense forward", "theirs ÷ dense forward", "ours peak RSS (MiB)", "theirs peak RSS (MiB)", "sparsity ours / theirs",
                          "embedding zeros ours / theirs", "perplexity ours / theirs"], table))

if __name__ == "__main__":
    main()
