"""Prune models larger than memory: stream decoder layers one at a time from a safetensors checkpoint.

The model is built on the meta device; only the tensors outside the decoder layers (embeddings,
final norm, …) are attached; embedding tables are read row by row on first lookup, so only the
rows the calibration touches take memory; non-persistent buffers (rotary tables) are computed by
the constructors as usual. The ordinary engine (:func:`polyprune.prune`) then walks the layers with a ``layer_io``
that loads layer *i* from disk before its statistics and, once its outputs have fed layer *i+1*,
writes its (pruned or quantised) tensors to the output checkpoint and frees it; each matrix's mask,
kept values and info go to their files as it is pruned (:class:`polyprune.run.StreamSink`). Masks
are therefore the ones of the in-memory path, bit for bit.

Output (inside ``out``): ``model/`` (sharded safetensors + index + config + tokenizer files),
``masks.safetensors``, ``weights.safetensors`` (kept values of weight-updating methods) and
``info.safetensors`` (e.g. GPTQ scales), all written tensor by tensor.
"""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError
from . import onload
from .masks import sparsity_report

log = logging.getLogger(__name__)

from .tensorfile import (ST_DTYPES, WEIGHT_FILE, Checkpoint, SafetensorsWriter,  # noqa: F401  (re-exported)
                         save_tensors)

# ---------------------------------------------------------------------------------------------
# the allocator

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations ≥ ``threshold`` bytes from their own mappings, given back to the OS
    when freed. By default the threshold grows with every large block freed (up to 32 MiB), so a
    layer's tensors end up in a heap that fragments: measured on a 1 B-parameter Llama, the
    resident size after each layer crept up by 30–75 MiB per layer; with a fixed threshold it
    returns to the same value after every layer. Process-wide and permanent, so opt-in
    (``stream_prune(tune_allocator=True)``; the CLI's streamed prune, whose process ends after the run).
    Returns whether it was applied."""
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(M_MMAP_THRESHOLD, threshold))


def trim_heap() -> None:
    """Give free heap pages back to the OS (glibc ``malloc_trim``), e.g. after a layer is released."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)



def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    elif leaf in mod._buffers:
        mod._buffers[leaf] = value
    else:
        raise KeyError(name)


def _state_names(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by full name (what a checkpoint holds), ties once."""
    return {prefix + k: v for k, v in module.state_dict(keep_vars=True).items()}


def skeleton(folder: str | Path, dtype: torch.dtype, ckpt: Checkpoint | None = None):
    """``(model, layers path, checkpoint)``: the causal LM on the meta device with every tensor outside
    the decoder layers attached (nn.Embedding tables lazily, row by row)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from .model import find_layers
    ckpt = ckpt or Checkpoint(folder)
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except ValueError as e:
            raise UserError(f"model {folder} is not a causal LM: {str(e).splitlines()[0]}") from None
    model.eval()
    model.requires_grad_(False)
    path, layers = find_layers(model)
    layer_prefix = f"{path}."
    embeddings = {f"{n}.weight": m for n, m in model.named_modules()
                  if isinstance(m, nn.Embedding) and not n.startswith(layer_prefix)}
    for name, t in _state_names(model).items():
        if name.startswith(layer_prefix) or t.device.type != "meta":
            continue
        if name not in ckpt:
            continue  # tied (lm_head) or unused: re-tied below, checked after
        want = dtype if t.is_floating_point() else t.dtype
        if name in embeddings and len(ckpt.shape(name)) == 2:
            src, hook = ckpt.lazy_rows(name, want)
            embeddings[name].register_forward_pre_hook(hook)
        else:
            src = ckpt.load(name) if ckpt.dtype(name) == want else ckpt.load(name).to(want)
        if tuple(src.shape) != tuple(t.shape):
            raise UserError(f"checkpoint tensor {name} has shape {tuple(src.shape)}, the model expects "
                            f"{tuple(t.shape)}: config.json does not match the weights")
        _set_tensor(model, name, src)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [n for n, t in _state_names(model).items() if not n.startswith(layer_prefix) and t.device.type == "meta"]
    if missing:
        log.info("not in the checkpoint, left unloaded (unused while pruning): %s", ", ".join(missing))
    layer_keys = [k for k in ckpt.keys() if k.startswith(layer_prefix)]
    if not layer_keys:
        raise UserError(f"the checkpoint in {folder} has no tensors under {path}: its tensor names differ from "
                        f"the model's; re-save it with save_pretrained")
    return model, path, ckpt


# ---------------------------------------------------------------------------------------------
# the layer I/O used by the engine

class LayerStreamer:
    """``layer_io`` for :func:`polyprune.prune`: load layer i from the checkpoint, and afterwards
    write its tensors (in the checkpoint's dtype) to ``model/``, then free it."""

    def __init__(self, model: nn.Module, path: str, ckpt: Checkpoint, out: Path, dtype: torch.dtype,
                 n_layers: int, device: torch.device | str | None = None):
        # compute device (the engine runs each layer there, as with :class:`polyprune.onload.Onloader`):
        # a layer is read to the host, then moved there; None = where it is read, the CPU
        self.device = None if device is None else torch.device(device)
        self.model, self.path, self.ckpt, self.out, self.dtype = model, path, ckpt, Path(out), dtype
        self.model_dir = self.out / "model"
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.n_shards = n_layers + 1
        self.weight_map: dict[str, str] = {}
        self.total_size = 0
        self.load_s = self.write_s = 0.0

    def shard_name(self, k: int) -> str:
        return f"model-{k:05d}-of-{self.n_shards:05d}.safetensors"

    def write_outside(self) -> None:
        """Copy every tensor outside the decoder layers byte for byte (shard 1)."""
        prefix = f"{self.path}."
        names = [k for k in self.ckpt.keys() if not k.startswith(prefix)]
        shard = self.shard_name(1)
        w = SafetensorsWriter(self.model_dir / shard, {"format": "pt"})
        try:
            for n in names:
                w.add_from(n, self.ckpt)
                self.weight_map[n] = shard
        except BaseException:
            w.abort()
            raise
        w.close()
        self.total_size += w.nbytes

    def _layer_keys(self, i: int) -> list[str]:
        prefix = f"{self.path}.{i}."
        return [k for k in self.ckpt.keys() if k.startswith(prefix)]

    def load(self, i: int, layer: nn.Module) -> None:
        t0 = time.perf_counter()
        names = _state_names(layer, f"{self.path}.{i}.")
        for name, t in names.items():
            if name not in self.ckpt:
                if t.device.type == "meta":
                    raise UserError(f"checkpoint has no tensor {name}: its tensor names differ from the model's; "
                                    f"re-save it with save_pretrained")
                continue
            want = self.dtype if t.is_floating_point() else t.dtype
            value = self.ckpt.load(name)
            if tuple(value.shape) != tuple(t.shape):
                raise UserError(f"checkpoint tensor {name} has shape {tuple(value.shape)}, the model expects "
                                f"{tuple(t.shape)}: config.json does not match the weights")
            _set_tensor(self.model, name, value if value.dtype == want else value.to(want))
        if self.device is not None:
            onload.move_module(layer, self.device)
        self.load_s += time.perf_counter() - t0

    def _to_host(self, layer: nn.Module) -> None:
        """Bring a layer computed on ``device`` back to the host, where it is written."""
        if self.device is not None:
            onload.move_module(layer, torch.device("cpu"))

    def release(self, i: int, layer: nn.Module) -> None:
        self._to_host(layer)
        t0 = time.perf_counter()
        prefix = f"{self.path}.{i}."
        state = _state_names(layer, prefix)
        shard = self.shard_name(i + 2)
        tensors = {}
        for k in self._layer_keys(i):
            if k not in state:
                raise UserError(f"checkpoint tensor {k} is not a tensor of the model: re-save it with save_pretrained")
            tensors[k] = state[k]
            self.weight_map[k] = shard
        self.total_size += save_tensors(self.model_dir / shard, tensors, {"format": "pt"},
                                        {k: self.ckpt.dtype(k) for k in tensors})
        del tensors
        for name, t in state.items():  # free: back to meta
            if t.device.type != "meta" and name in self.ckpt:
                _set_tensor(self.model, name, torch.empty(t.shape, dtype=t.dtype, device="meta"))
        del state
        trim_heap()
        self.write_s += time.perf_counter() - t0

    def finish(self, source: Path) -> None:
        """Write the checkpoint's index and copy its config / tokenizer files."""
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        for f in sorted(Path(source).iterdir()):
            if f.is_file() and not WEIGHT_FILE.match(f.name) and not f.name.startswith("."):
                shutil.copy2(f, self.model_dir / f.name)


# ---------------------------------------------------------------------------------------------
# checks and entry points

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(text: str | int | None) -> int | None:
    """``"4GB"``, ``"512MiB"``, ``1024`` → bytes (binary units)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UserError(f"memory size {text!r} is not understood: write e.g. 4GB or 512MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def local_checkpoint(model: str) -> Path:
    from .model import resolve_model_path
    p = Path(resolve_model_path(model))
    if not p.is_dir():
        try:
            from huggingface_hub import snapshot_download
            p = Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        except Exception as e:  # noqa: BLE001 — any hub failure is bad input here
            raise UserError(f"cannot stream {model!r}: no local checkpoint ({str(e).splitlines()[0]}); "
                            f"give a local model folder") from None
    return p


def estimated_bytes(ckpt: Checkpoint, dtype: torch.dtype) -> int:
    """Bytes the whole model would take in memory in ``dtype``."""
    item = torch.empty(0, dtype=dtype).element_size()
    total = 0
    for name, (_, code, shape, start, end) in ckpt.entries.items():
        n = int(np.prod(shape)) if shape else 1
        total += n * (item if ST_DTYPES.get(code, torch.float32).is_floating_point else ST_DTYPES[code].itemsize)
    return total


def check_target(out: Path, need: int) -> None:
    """The output folder's parent must be writable and have ``need`` bytes free."""
    import tempfile
    probe = Path(out).absolute().parent
    try:
        probe.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".polyprune-probe-", dir=str(probe))
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UserError(f"cannot write to {probe} ({e.strerror or e}): choose a writable --out") from None
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserError(f"not enough disk space at {probe}: the streamed checkpoint needs about "
                        f"{need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free; free space or choose another --out")


def needed_bytes(ckpt: Checkpoint, prunable: int, updates_weights: bool) -> int:
    """Disk for model/ + masks + kept values, with room for the writers' side files."""
    return int(ckpt.nbytes() + 2 * prunable * (1 + (4 if updates_weights else 0)) + (64 << 20))


def stream_prune(model_dir: str | Path, calibration: Any, out: str | Path, method: str = "wanda",
                 sparsity: float | None = 0.5, pattern: str = "unstructured", *, dtype: str | torch.dtype | None = None,
                 activation_dtype: str | torch.dtype | None = None, check_space: bool = True,
                 mask_metadata: dict[str, str] | None = None, tune_allocator: bool = False, sink=None,
                 device: str | torch.device | None = None, activation_device: str | torch.device | None = None,
                 **prune_options) -> dict:
    """Prune the safetensors checkpoint in ``model_dir`` layer by layer into the folder ``out`` (created;
    normally a staged temp folder): ``model/``, ``masks.safetensors``, ``weights.safetensors``,
    ``info.safetensors``, ``permutations.safetensors``. ``prune_options`` go to :func:`polyprune.prune`
    (seed, sequential, keep_dense_layers, method_options …); samples go through each layer one at a
    time unless ``batch_tokens`` is given (least activation memory). ``sink``: the
    :class:`polyprune.run.StreamSink` of the run's writer (default: one in ``out`` with
    ``mask_metadata``), closed here. ``tune_allocator``: apply :func:`return_freed_memory` first, a
    process-wide glibc setting, so only a process that does nothing else opts in (``polyprune prune
    --offload`` does). ``device``: where each layer is computed after it is read to the host (e.g.
    ``cuda``; default: the CPU, where it is read); ``activation_device``: where hidden states wait on a
    GPU run (``auto`` / None: from free memory, see :func:`polyprune.onload.place_streamed`). Returns
    the run record (``PruneResult.record`` plus ``streaming``)."""
    from .engine import prune
    from .methods import get_method
    from .model import prunable_weights, resolve_dtype
    from .run import StreamSink
    prune_options.setdefault("batch_tokens", 1)
    from .config import check_streaming
    check_streaming(prune_options.get("allocation"), prune_options.get("keep_stats"))
    meth = get_method(method)
    compute = None if device is None else torch.device(device)
    dt = resolve_dtype(dtype, compute or torch.device("cpu"))
    act = resolve_dtype(activation_dtype, compute or torch.device("cpu")) if activation_dtype else None
    out = Path(out)
    ckpt = Checkpoint(model_dir)
    model, path, ckpt = skeleton(model_dir, dt, ckpt)
    prunable = sum(m.weight.numel() for m in prunable_weights(model).values())
    if check_space:
        check_target(out / "x", needed_bytes(ckpt, prunable, meth.updates_weights))
    from .model import find_layers
    n_layers = len(find_layers(model)[1])
    if compute is not None:
        prune_options["activation_device"] = onload.place_streamed(model, compute, calibration, method,
                                                                   prune_options, activation_device,
                                                                   (act or dt).itemsize)
    io = LayerStreamer(model, path, ckpt, out, dt, n_layers, device=compute)
    if sink is None:
        sink = StreamSink(out, mask_metadata or {"method": method, "model": str(model_dir), "pattern": str(pattern),
                                                 "sparsity": str(sparsity)})
    if tune_allocator:
        return_freed_memory()
    try:
        io.write_outside()
        result = prune(model, calibration, method, sparsity, pattern, layer_io=io, activation_dtype=act, sink=sink,
                       **prune_options)
        io.finish(Path(model_dir))
        sink.close()
    except BaseException:
        sink.abort()
        raise
    rec = result.record
    rec["streaming"] = {"activation_dtype": str(act or dt).replace("torch.", ""), "layer_load_s": io.load_s,
                        "layer_write_s": io.write_s, "checkpoint_bytes": ckpt.nbytes(),
                        "model_bytes_in_memory_dtype": estimated_bytes(ckpt, dt)}
    return rec


def should_stream(offload: bool, max_memory: str | int | None, model: str, dtype: str | None) -> bool:
    """Stream when asked, or when the model would not fit ``max_memory`` in its compute dtype."""
    if offload:
        return True
    limit = parse_size(max_memory)
    if limit is None:
        return False
    from .model import resolve_dtype
    need = estimated_bytes(Checkpoint(local_checkpoint(model)), resolve_dtype(dtype, torch.device("cpu")))
    if need > limit:
        log.info("model needs %.2f GiB > --max-memory %.2f GiB: streaming layers from disk", need / 2**30, limit / 2**30)
        return True
    return False


__all__ = ["Checkpoint", "LayerStreamer", "SafetensorsWriter", "parse_size", "should_stream",
           "skeleton", "stream_prune", "sparsity_report"]
