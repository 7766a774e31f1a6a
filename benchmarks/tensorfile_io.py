"""Hand-written safetensors I/O (:mod:`polyprune.tensorfile`) against the ``safetensors`` library.

Writes a ~1 GB checkpoint (32 matrices of 4096 × 4096, fp16 and bf16 alternating) and measures,
each mode in a fresh subprocess (peak RSS: ``VmHWM`` above ``VmRSS`` after the imports):

- ``read-hand`` / ``read-lib`` / ``read-lib-one-handle``: every tensor read once (``readinto`` a
  private buffer, as ``Checkpoint.load`` did, vs ``Checkpoint.load`` now: one ``safe_open`` +
  ``get_tensor`` per tensor, vs one ``safe_open`` kept open for all);
- ``rows-hand`` / ``rows-lib``: 2,000 random rows of one matrix read one by one into an
  embedding-style buffer (``os.pread`` as ``Checkpoint.lazy_rows`` does vs ``get_slice(name)[r:r+1]``);
- ``write-hand`` / ``write-lib``: the same 32 matrices made one at a time and written
  (``SafetensorsWriter``, tensor by tensor, vs ``save_file``, which needs them all at once);
- ``shard-hand`` / ``shard-lib``: the 32 matrices already in memory written as one file
  (``save_tensors`` vs ``save_file``), peak RSS above the process holding them.

    python benchmarks/tensorfile_io.py --dir /tmp/st-bench

The page cache is warm for the reads (the file was just written); one run each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

N, SHAPE, ROWS = 32, (4096, 4096), 2000


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _matrix(i: int):
    import torch
    g = torch.Generator().manual_seed(i)
    return torch.randn(SHAPE, generator=g).to(torch.float16 if i % 2 else torch.bfloat16)


def _touch(t) -> int:
    import torch
    return int(t.reshape(-1).view(torch.uint8)[::4096].sum())  # one byte of every page


def run_mode(mode: str, folder: Path) -> dict:
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from polyprune.tensorfile import Checkpoint, SafetensorsWriter
    path = folder / "model.safetensors"
    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "read-hand":  # the hand-written reader Checkpoint.load used before safe_open
        ck = Checkpoint(folder)
        for n in ck.keys():
            _, _, shape, start, end = ck.entries[n]
            buf = bytearray(end - start)
            with open(path, "rb") as fh:
                fh.seek(start)
                fh.readinto(buf)
            _touch(torch.frombuffer(buf, dtype=ck.dtype(n)).reshape(shape))
    elif mode == "read-lib":  # Checkpoint.load: one safe_open per tensor
        ck = Checkpoint(folder)
        for n in ck.keys():
            _touch(ck.load(n))
    elif mode == "read-lib-one-handle":  # one safe_open for the whole file
        with safe_open(str(path), "pt") as f:
            for n in f.keys():
                _touch(f.get_tensor(n))
    elif mode in ("rows-hand", "rows-lib"):
        rows = np.random.default_rng(0).choice(SHAPE[0], ROWS, replace=False).tolist()
        out = torch.zeros(SHAPE, dtype=torch.float32)
        if mode == "rows-hand":
            ck = Checkpoint(folder)
            _, _, shape, start, _ = ck.entries["m001"]
            row_bytes = SHAPE[1] * 2
            with open(path, "rb") as fh:
                for r in rows:
                    raw = bytearray(os.pread(fh.fileno(), row_bytes, start + r * row_bytes))
                    out[r] = torch.frombuffer(raw, dtype=torch.float16).to(torch.float32)
        else:
            with safe_open(str(path), "pt") as f:
                sl = f.get_slice("m001")
                for r in rows:
                    out[r] = sl[r:r + 1][0].to(torch.float32)
    elif mode == "write-hand":
        w = SafetensorsWriter(folder / "out.safetensors", {"format": "pt"})
        for i in range(N):
            w.add(f"m{i:03d}", _matrix(i))
        w.close()
    elif mode == "write-lib":
        tensors = {f"m{i:03d}": _matrix(i) for i in range(N)}
        save_file(tensors, str(folder / "out.safetensors"), {"format": "pt"})
    elif mode in ("shard-hand", "shard-lib"):  # a dict already in memory, as a streamed model shard
        from polyprune.tensorfile import save_tensors
        tensors = {f"m{i:03d}": torch.full(SHAPE, float(i), dtype=torch.bfloat16) for i in range(N)}
        base, t0 = _rss_mb(), time.perf_counter()
        if mode == "shard-hand":
            save_tensors(folder / "out.safetensors", tensors, {"format": "pt"})
        else:
            save_file(tensors, str(folder / "out.safetensors"), {"format": "pt"})
    else:
        raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")  # not ru_maxrss, which carries the parent's peak over fork + exec
    return {"mode": mode, "seconds": round(seconds, 3), "peak_rss_above_imports_mb": round(peak - base, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/st-bench"))
    ap.add_argument("--mode", help="one mode in this process (used by the driver)")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.dir)))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    if not (args.dir / "model.safetensors").is_file():
        from polyprune.tensorfile import SafetensorsWriter
        w = SafetensorsWriter(args.dir / "model.safetensors", {"format": "pt"})
        for i in range(N):
            w.add(f"m{i:03d}", _matrix(i))
        w.close()
    results = {}
    for mode in ("read-hand", "read-lib", "read-lib-one-handle", "rows-hand", "rows-lib", "write-hand", "write-lib", "shard-hand", "shard-lib"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--dir", str(args.dir)],
                             check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[mode]), flush=True)
    (args.dir / "out.safetensors").unlink(missing_ok=True)
    for what in ("read", "rows", "write", "shard"):
        h, lib = results[f"{what}-hand"], results[f"{what}-lib"]
        print(f"{what}: time hand/lib {h['seconds'] / lib['seconds']:.2f}, peak RSS hand/lib "
              f"{h['peak_rss_above_imports_mb'] / max(lib['peak_rss_above_imports_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
