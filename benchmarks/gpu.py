"""Pruning on one GPU: speed, memory and agreement with the CPU, on seeded random-weight models built
from configs (nothing is downloaded).

Models: a Llama-3-8B-shaped one (32 layers, d = 4096, MLP 14336, GQA 32/8, vocab 128256) and a
1 B one (Llama-3.2-1B shape: 16 layers, d = 2048, MLP 8192, GQA 32/8). Calibration: 128 × 2048
random tokens (``--quick``: 32 × 2048). Printed per run (Wanda and SparseGPT, 50 % and 2:4):

- time ÷ one dense decoder forward over the same tokens (the same per-layer calls the pruner makes);
- peak GPU memory ÷ model size;
- onloading (weights on the host, one layer on the GPU at a time) vs all-on-GPU: time and peak
  memory, the latter also ÷ (one layer + hidden states);
- streaming from disk onto the device (``--offload --device cuda``: each layer read from the
  safetensors checkpoint to the host, then computed on the GPU), on the 1 B model (its checkpoint is
  written first; time ÷ the 1 B model's dense forward);
- mask agreement of the GPU runs (bf16 and fp32) with the CPU fp32 run on the 1 B model (8 × 512
  tokens: the CPU side has to finish too);
- llm-compressor's Wanda / SparseGPT time on the same workload, when it is importable.

Targets: Wanda ≤ 2.0 dense forwards; SparseGPT ≤ 4 on the 8 B shape; onloading peak ≤
one layer + hidden states + 10 %; Wanda ≤ 0.7 × llm-compressor's time. Budget: under 8 minutes on
one H100/H200-class GPU.

    python benchmarks/gpu.py [--quick] [--json out.json]
    python benchmarks/gpu.py --device cpu --tiny --quick     # a few seconds: checks the script works
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

NEEDED = {"torch": "torch", "transformers": "transformers", "accelerate": "accelerate", "safetensors": "safetensors",
          "pydantic": "pydantic", "typer": "typer", "rich": "rich", "scipy": "scipy", "yaml": "pyyaml",
          "filelock": "filelock"}


def check_packages() -> None:
    """A GPU machine may lack this project's dependencies: say which, and how to get them."""
    missing = []
    for mod, pkg in NEEDED.items():
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(pkg)
    try:
        importlib.import_module("polyprune")
    except ImportError:
        missing.append("polyprune (pip install -e . from the repository root)")
    if missing:
        sys.exit(f"benchmarks/gpu.py needs: {', '.join(missing)}; install them (pip install ...) and rerun")


SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
               tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024),
    "tiny-small": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024),
}


def build(shape: str, dtype, device, seed: int = 0):
    """A seeded random-weight Llama of ``shape``, initialised directly on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES[shape]), dtype=dtype)
    model.eval().requires_grad_(False)
    return model


def tokens(n: int, seqlen: int, vocab: int, seed: int = 0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (n, seqlen), generator=g)


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_forward_s(model, ids, device) -> float:
    """One dense pass of all calibration tokens through the decoder layers (capture excluded)."""
    import torch
    import polyprune as pp
    from polyprune.collect import capture, run_layer, store
    from polyprune.model import find_layers
    layers = find_layers(model)[1]
    entries = capture(model, pp.Calibration([pp.Sample(r) for r in ids]), layers=layers)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, layer in enumerate(layers):
            for e in entries:
                store(e, run_layer(layer, e, i))
    sync(device)
    return time.perf_counter() - t0


def prune_run(model, ids, method, pattern, device, onload=False, activation_device=None) -> dict:
    import torch
    import polyprune as pp
    from polyprune.model import model_size_bytes
    from polyprune.onload import Onloader, move_module, tensor_bytes
    from polyprune.model import find_layers
    size = model_size_bytes(model)
    io = None
    if onload:
        io = Onloader(model, device, activation_device)
        activation_device = io.activation_device
    elif device.type == "cuda":
        move_module(model, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    sync(device)
    t0 = time.perf_counter()
    masks = pp.prune(model, ids, method, 0.5, pattern, layer_io=io, activation_device=activation_device)
    sync(device)
    out = {"seconds": time.perf_counter() - t0, "model_bytes": size, "sparsity": masks.record["achieved_sparsity"],
           "phases": {k: round(v, 2) for k, v in masks.record["timings_s"].items()}}
    if device.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        out["base_bytes"] = base
    layer = find_layers(model)[1][0]
    out["layer_bytes"] = tensor_bytes(layer)
    out["masks"] = dict(masks.masks)
    return out


def streamed_run(shape: str, ids, dtype, device, activation_device=None) -> dict:
    """Wanda 50 % streamed from a checkpoint of ``shape`` written to a temp folder first."""
    import tempfile
    from pathlib import Path

    import torch
    from polyprune.model import find_layers, model_size_bytes
    from polyprune.onload import tensor_bytes
    from polyprune.stream import stream_prune
    with tempfile.TemporaryDirectory(prefix="polyprune-gpu-bench-") as tmp:
        model = build(shape, dtype, "cpu")
        model.save_pretrained(Path(tmp) / "model")
        size, layer_b = model_size_bytes(model), tensor_bytes(find_layers(model)[1][0])
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        rec = stream_prune(Path(tmp) / "model", ids, Path(tmp) / "out", "wanda", 0.5, dtype=dtype, device=device,
                           activation_device=activation_device, check_space=False)
        sync(device)
        out = {"seconds": time.perf_counter() - t0, "model_bytes": size, "layer_bytes": layer_b,
               "sparsity": rec["achieved_sparsity"], "phases": {k: round(v, 2) for k, v in rec["timings_s"].items()},
               "layer_load_s": round(rec["streaming"]["layer_load_s"], 2),
               "layer_write_s": round(rec["streaming"]["layer_write_s"], 2)}
        if device.type == "cuda":
            out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def agreement(a: dict, b: dict) -> float:
    return sum(int((a[k] == b[k]).sum()) for k in b) / sum(v.numel() for v in b.values())


def llm_compressor_s(shape, ids, method, pattern, dtype, device) -> str:
    """llm-compressor's oneshot time on the same model and tokens, or why there is none."""
    try:
        from llmcompressor import oneshot
        from llmcompressor.modifiers.obcq import SparseGPTModifier
        from llmcompressor.modifiers.pruning import WandaPruningModifier
    except ImportError:
        return "not importable"
    try:
        from datasets import Dataset
        model = build(shape, dtype, device)
        ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * ids.shape[1]] * ids.shape[0]})
        mod = WandaPruningModifier if method == "wanda" else SparseGPTModifier
        kw = {"sparsity": 0.5, "mask_structure": "2:4" if pattern == "2:4" else "0:0", "targets": ["Linear"],
              "ignore": ["lm_head"]}
        sync(device)
        t0 = time.perf_counter()
        oneshot(model=model, dataset=ds, recipe=[mod(**kw)], num_calibration_samples=ids.shape[0],
                max_seq_length=ids.shape[1])
        sync(device)
        return f"{time.perf_counter() - t0:.1f}"
    except Exception as e:  # a peer's API drift must not lose the rest of the table
        return f"failed: {str(e).splitlines()[0][:80] if str(e) else type(e).__name__}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="32 calibration samples instead of 128")
    ap.add_argument("--tiny", action="store_true", help="tiny models (checks the script, measures nothing)")
    ap.add_argument("--nsamples", type=int, default=None)
    ap.add_argument("--seqlen", type=int, default=None)
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--patterns", default="unstructured,2:4")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    check_packages()
    import torch
    from polyprune.onload import check_device, check_dtype
    from polyprune.errors import UserError
    try:
        device = check_device(args.device)
        dtype = check_dtype(None, device)  # bf16 on a GPU (fp16 where it lacks bf16), fp32 on the CPU
    except UserError as e:
        sys.exit(str(e))
    big, small = ("tiny", "tiny-small") if args.tiny else ("8b", "1b")
    n = args.nsamples or (4 if args.tiny and args.quick else 32 if args.quick else 128)
    L = args.seqlen or (64 if args.tiny else 2048)
    vocab = SHAPES[big]["vocab_size"]
    ids = tokens(n, L, vocab)
    t_start = time.perf_counter()
    report: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "dtype": str(dtype).replace("torch.", ""), "model": big, "calibration": [n, L], "runs": []}
    print(f"# {report['gpu'] or 'cpu'}; {big} model in {report['dtype']}; calibration {n} x {L} tokens", flush=True)

    model = build(big, dtype, device)
    dense = dense_forward_s(model, ids, device)
    del model
    report["dense_forward_s"] = dense
    print(f"dense decoder forward: {dense:.2f} s", flush=True)

    for method in args.methods.split(","):
        for pattern in args.patterns.split(","):
            r = prune_run(build(big, dtype, device), ids, method, pattern, device)
            r.pop("masks")
            row = {"run": f"{method} {pattern}", "placement": "all on device", **r, "x_dense": r["seconds"] / dense}
            report["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "phases"}), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # onloading: weights on the host, one decoder layer on the device at a time
    for act in ([None, "cpu"] if device.type == "cuda" else [None]):
        host_model = build(big, dtype, device)
        r = prune_run(host_model, ids, "wanda", "unstructured", device, onload=True, activation_device=act)
        r.pop("masks")
        hidden = n * L * SHAPES[big]["hidden_size"] * torch.tensor([], dtype=dtype).element_size()
        row = {"run": "wanda unstructured", "placement": f"onloading, hidden states on {act or device}", **r,
               "x_dense": r["seconds"] / dense}
        if "peak_bytes" in r:
            resident_hidden = hidden if act is None else 0
            row["peak_vs_layer_plus_hidden"] = r["peak_bytes"] / (r["layer_bytes"] + resident_hidden)
        report["runs"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "phases"}), flush=True)
        del host_model

    # streamed from disk onto the device, on the small model (its checkpoint is written first)
    ids_streamed = tokens(n, L, SHAPES[small]["vocab_size"], seed=2)
    small_model = build(small, dtype, device)
    dense_small = dense_forward_s(small_model, ids_streamed, device)
    del small_model
    r = streamed_run(small, ids_streamed, dtype, device)
    row = {"run": f"wanda unstructured ({small})", "placement": f"streamed from disk onto {device}", **r,
           "x_dense": r["seconds"] / dense_small, "dense_forward_s": dense_small}
    if "peak_bytes" in r:
        hidden = n * L * SHAPES[small]["hidden_size"] * torch.tensor([], dtype=dtype).element_size()
        row["peak_vs_layer_plus_hidden"] = r["peak_bytes"] / (r["layer_bytes"] + hidden)
    report["runs"].append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "phases"}), flush=True)

    # agreement with the CPU fp32 run on the small model (few tokens: the CPU has to finish too)
    ids_small = tokens(8, 512 if not args.tiny else 32, SHAPES[small]["vocab_size"], seed=1)
    cpu = torch.device("cpu")
    agree = {}
    for method in args.methods.split(","):
        ref = prune_run(build(small, torch.float32, cpu), ids_small, method, "unstructured", cpu)["masks"]
        for dt in sorted({dtype, torch.float32}, key=str):
            got = prune_run(build(small, torch.float32, cpu).to(dt), ids_small, method, "unstructured", device)["masks"]
            agree[f"{method} {str(dt).replace('torch.', '')} on {device.type}"] = agreement(got, ref)
    report["agreement_vs_cpu_fp32"] = agree
    print("mask agreement with CPU fp32 (small model, 50 %):", json.dumps(agree), flush=True)

    if device.type == "cuda":
        report["llm_compressor_s"] = {f"{m} {p}": llm_compressor_s(big, ids, m, p, dtype, device)
                                      for m in args.methods.split(",") for p in args.patterns.split(",")}
    else:
        report["llm_compressor_s"] = "GPU only"
    print("llm-compressor:", json.dumps(report["llm_compressor_s"]), flush=True)
    report["total_s"] = time.perf_counter() - t_start

    print()
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def table(report: dict) -> str:
    from _common import markdown_table
    rows = []
    for r in report["runs"]:
        peak = f"{r['peak_bytes'] / r['model_bytes']:.2f}" if "peak_bytes" in r else "n/a"
        rows.append([r["run"], r["placement"], f"{r['seconds']:.1f}", f"{r['x_dense']:.2f}", peak,
                     f"{r['peak_vs_layer_plus_hidden']:.2f}" if "peak_vs_layer_plus_hidden" in r else ""])
    return markdown_table(["run", "placement", "seconds", "÷ dense forward", "peak GPU ÷ model size",
                           "peak ÷ (layer + resident hidden)"], rows)


if __name__ == "__main__":
    sys.exit(main())
