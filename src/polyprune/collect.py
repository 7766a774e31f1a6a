"""Layer-wise walking: capture every decoder layer's call arguments, then run layers one at a time.

Per-layer kwargs are *recorded*, not copied from layer 0: models such as Gemma-3 give different
masks and rotary tables to sliding-window and global layers. Every layer's ``forward`` is swapped
for a recorder during one cheap pass per distinct input shape (embeddings only; the last recorder
stops the forward), so whatever the model's own forward passes — attention masks, position
ids/embeddings, alibi, cache flags, positional args — is replayed exactly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .calibration import Calibration, Sample
from .errors import UserError
from .model import find_layers, prunable_modules
from .progress import Timer, track
from .stats import ModuleStats, SetStats

log = logging.getLogger(__name__)


BATCH_TOKENS = 4096  # tokens per batched layer call (bounds the transient activations of one call)


class _Stop(Exception):
    pass


@dataclass
class Entry:
    """A batch of calibration samples as it flows through the layers."""

    samples: list[Sample]  # consecutive calibration samples of one shape, run as one batch
    hidden: torch.Tensor  # [B, L, d] input of the current layer
    layer_args: list  # per layer: (args tuple, kwargs dict), shared between batches of one shape


def _model_inputs(sample: Sample, count_pads: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, am = sample.input_ids, sample.attention_mask
    if am is not None and not count_pads:
        keep = am.bool()
        ids, am = ids[keep], None
    if am is None:
        am = torch.ones_like(ids)
    return ids.unsqueeze(0).to(device), am.unsqueeze(0).to(device)


def capture(model: nn.Module, calibration: Calibration, count_pads: bool = False,
            layers: nn.ModuleList | None = None, activation_dtype: torch.dtype | None = None,
            batch_tokens: int | None = None, activation_device: torch.device | str | None = None,
            compute_device: torch.device | str | None = None) -> list[Entry]:
    """Layer-0 hidden states of every sample and the call arguments of every layer.

    Consecutive samples of one shape (and pad mask) run as one batch of at most ``batch_tokens``
    tokens (default ``BATCH_TOKENS``): fewer, larger matmuls; statistics are still added sample by
    sample, in sample order.

    Pads (attention_mask 0) are removed before the forward unless ``count_pads`` (the references'
    behaviour: pads stay in the sequence and in the statistics). ``activation_dtype``: store the
    hidden states in this dtype (e.g. bfloat16 to halve the buffers); layers still compute in theirs.
    ``activation_device``: keep the hidden states there (default: where the embeddings run); a CPU
    copy of GPU activations is pinned, so the per-layer transfers run at full bus speed.
    ``compute_device``: where the decoder layers will run when it is not where the embeddings are
    (layer-by-layer onloading): the recorded layer arguments (rotary tables, masks) go there once.
    Decoder layers may sit on the meta device (or another device): their forward is replaced by a recorder."""
    if layers is None:
        layers = find_layers(model)[1]
    device = next(model.parameters()).device
    n = len(layers)
    recorded: list = [None] * n
    first: dict[str, Any] = {}

    def recorder(i):
        def fwd(*args, **kwargs):
            if i == 0:
                first["hidden"] = args[0] if args else kwargs.pop("hidden_states")
            recorded[i] = (tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"})
            if i == n - 1:
                raise _Stop
            return args[0] if args else kwargs.get("hidden_states")
        return fwd

    batch_tokens = batch_tokens or BATCH_TOKENS
    groups: list[tuple[tuple, list[Sample], list, list]] = []  # key, samples, ids, masks
    for s in calibration.samples:
        ids, am = _model_inputs(s, count_pads, device)
        if ids.numel() == 0:
            continue
        key = (ids.shape[1],) if bool(am.all()) else (ids.shape[1], am.cpu().numpy().tobytes())
        if groups and groups[-1][0] == key and (len(groups[-1][1]) + 1) * ids.shape[1] <= batch_tokens:
            groups[-1][1].append(s), groups[-1][2].append(ids), groups[-1][3].append(am)
        else:
            groups.append((key, [s], [ids], [am]))
    cache: dict[tuple, list] = {}
    entries: list[Entry] = []
    for layer_i, layer in enumerate(layers):
        layer.forward = recorder(layer_i)
    try:
        with torch.no_grad():
            for key, samples, ids, am in groups:
                recorded[:] = [None] * n
                try:
                    model(input_ids=torch.cat(ids), attention_mask=torch.cat(am), use_cache=False)
                except _Stop:
                    pass
                if any(r is None for r in recorded):
                    raise UserError(f"{type(model).__name__}: the forward did not call every decoder layer")
                if compute_device is not None and (len(samples), *key) not in cache:
                    moved: dict[int, torch.Tensor] = {}  # layers given the same tensor share one copy

                    def to_compute(t):
                        if isinstance(t, torch.Tensor) and id(t) not in moved:
                            moved[id(t)] = t.to(compute_device)
                        return moved[id(t)] if isinstance(t, torch.Tensor) else t
                    recorded[:] = tree_map(to_compute, recorded)
                args = cache.setdefault((len(samples), *key), list(recorded))
                hidden = first["hidden"].detach()
                pin = compute_device is not None and torch.device(compute_device).type == "cuda"
                entries.append(Entry(samples, _place(hidden, activation_dtype, activation_device, pin), args))
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
    if not entries:
        raise UserError("calibration is empty: every sample has zero real tokens")
    return entries


def _place(hidden: torch.Tensor, dtype: torch.dtype | None, device: torch.device | str | None,
           pin: bool = False) -> torch.Tensor:
    """Hidden states in their storage dtype on their storage device; host buffers that a GPU copies
    from are pinned (``pin``, or when they come from a GPU)."""
    if dtype is not None and hidden.dtype != dtype:
        hidden = hidden.to(dtype)
    device = hidden.device if device is None else torch.device(device)
    pin = (pin or hidden.device.type == "cuda") and device.type == "cpu" and torch.cuda.is_available()
    if pin:
        return torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=True).copy_(hidden)
    return hidden if hidden.device == device else hidden.to(device)


def run_layer(layer: nn.Module, entry: Entry, index: int) -> torch.Tensor:
    """The layer's output for one entry, on the layer's device, in the entry's storage dtype when the
    entry lives there too (the layer computes in its own dtype). Hidden states kept elsewhere (the
    pinned CPU while the layer is on a GPU) are copied in for the call; :func:`store` copies back."""
    args, kwargs = entry.layer_args[index]
    hidden = entry.hidden
    p = next(layer.parameters())
    if hidden.device != p.device:
        hidden = hidden.to(p.device, non_blocking=True)
    out = layer(hidden if hidden.dtype == p.dtype else hidden.to(p.dtype), *args, **kwargs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out if out.dtype == hidden.dtype else out.to(hidden.dtype)


def store(entry: Entry, out: torch.Tensor) -> None:
    """Make ``out`` (a layer's output) the entry's hidden state: the same tensor when it lives where
    the entry does, else copied into the entry's own buffer (no new host allocation per layer)."""
    if out.device == entry.hidden.device:
        entry.hidden = out
    else:
        entry.hidden.copy_(out)


class _Seen(Exception):
    """Raised by the last statistics hook: the rest of the layer's forward is not needed."""


def _per_sample(x: torch.Tensor, n: int, name: str) -> list[torch.Tensor]:
    """A module input of a batch of ``n`` samples as ``n`` [tokens, features] views: [n, L, d], or
    [n·L, d] where the model flattens tokens first (OPT's MLP)."""
    if x.dim() >= 3 and x.shape[0] == n:
        return [x[b].reshape(-1, x.shape[-1]) for b in range(n)]
    if x.dim() == 2 and x.shape[0] % n == 0:
        return list(x.split(x.shape[0] // n))
    raise RuntimeError(f"{name}: input {tuple(x.shape)} is not batched over {n} samples")


def collect_layer_stats(layer: nn.Module, entries: list[Entry], index: int, kinds: frozenset,
                        sets: tuple[str, ...] | None, keep_outputs: bool, name: str = "",
                        reduce: Callable[[dict], None] | None = None) -> dict[str, SetStats]:
    """One pass of all samples through ``layer`` with hooks accumulating input statistics of every
    Linear/Conv1D. With ``keep_outputs`` the entries' hidden states are replaced by the outputs;
    without, each forward stops as soon as the last module's input has been recorded (its matmul
    and everything after it would be thrown away). ``reduce(stats)`` combines the statistics of
    modules with their own inputs (over processes, see :mod:`polyprune.distributed`) before they
    are copied to the modules sharing them."""
    modules = prunable_modules(layer)
    wanted = sets or tuple(sorted({s.set for e in entries for s in e.samples}))
    stats: dict[str, SetStats] = {}
    current: dict[str, Any] = {}
    # modules fed the very same tensor (q/k/v, gate/up) accumulate once: the first one's statistics
    # are copied to the others at the end (values identical to accumulating each, at a third of the cost)
    alias: dict[str, str] = {}
    handles = []
    finite: list[torch.Tensor] = []
    for mname, mod in modules.items():
        cols = mod.weight.shape[0] if type(mod).__name__ == "Conv1D" else mod.in_features
        stats[mname] = SetStats({s: ModuleStats(cols, kinds) for s in wanted})

        def hook(m, args, kwargs, _name=mname):
            raw = args[0] if args else next(iter(kwargs.values()))
            source = next((n for n, t in current["inputs"] if t is raw), None)
            if current["first"] and source is not None:
                alias[_name] = source
            elif alias.get(_name) != source:
                raise RuntimeError(f"decoder layer {name or index}: {_name} changed whether it shares its input")
            if source is None:
                current["inputs"].append((_name, raw))
                st = stats[_name]
                x = raw.detach()
                samples = current["samples"]
                for smp, part in zip(samples, _per_sample(x, len(samples), _name)):
                    if smp.set in st:  # one sample at a time, as the references accumulate
                        st[smp.set].add(part, smp.langs, batch=1)
            current["seen"].add(_name)
            if not keep_outputs and len(current["seen"]) == len(modules):
                raise _Seen
        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for j, e in enumerate(entries):
                current.update(samples=e.samples, seen=set(), inputs=[], first=j == 0)
                try:
                    out = run_layer(layer, e, index)
                except _Seen:
                    continue
                finite.append(finite_flag(out))
                if keep_outputs:
                    store(e, out)
    finally:
        for h in handles:
            h.remove()
    check_flags(finite, name or str(index))
    missing = [w for w in wanted if not any(s.set == w for e in entries for s in e.samples)]
    if missing:
        raise UserError(f"calibration set {missing[0]!r} has no samples: give it calibration data")
    if reduce is not None:
        reduce({m: s for m, s in stats.items() if m not in alias})
    for mname, source in alias.items():  # methods may change their statistics in place: each gets its own
        stats[mname] = SetStats({k: v.copy() for k, v in stats[source].items()})
    return stats


def finite_flag(out: torch.Tensor) -> torch.Tensor:
    """NaN or ±inf anywhere makes the fp32 sum non-finite (one reduction, no mask tensor); a 0-dim
    bool on the output's device, read later with the others (one host sync per layer, not per batch)."""
    return torch.isfinite(out.sum(dtype=torch.float32))


def check_flags(flags: list[torch.Tensor], name: str) -> None:
    if flags and not bool(torch.stack(flags).all()):
        raise UserError(f"non-finite activations at the output of decoder layer {name}: "
                        f"use float32 (--dtype float32) or check the calibration tokens")


def check_finite(out: torch.Tensor, name: str) -> None:
    check_flags([finite_flag(out)], name)


def propagate(layer: nn.Module, entries: list[Entry], index: int, name: str = "") -> None:
    """Replace each entry's hidden state by this layer's output (in place, one buffer)."""
    finite = []
    with torch.no_grad():
        for e in entries:
            out = run_layer(layer, e, index)
            finite.append(finite_flag(out))
            store(e, out)
    check_flags(finite, name or str(index))


def walk(model: nn.Module, calibration: Calibration | None, kinds: frozenset, sets: tuple[str, ...] | None,
         on_layer: Callable[[int, nn.Module, dict[str, SetStats] | None], None], *, sequential: bool = True,
         count_pads: bool = False, timer: Timer | None = None, skip_stats: Callable[[int], bool] = lambda i: False,
         description: str = "layers", before_layer: Callable[[int, nn.Module], None] | None = None,
         after_layer: Callable[[int, nn.Module], None] | None = None,
         activation_dtype: torch.dtype | None = None, batch_tokens: int | None = None,
         activation_device: torch.device | str | None = None,
         compute_device: torch.device | str | None = None) -> None:
    """Walk decoder layers in order. For each layer: statistics from the current inputs (if
    ``kinds``), ``on_layer(i, layer, stats)`` (which may prune it), then the layer's outputs feed
    the next layer: recomputed after ``on_layer`` when ``sequential``, else the dense outputs.
    ``before_layer`` / ``after_layer`` (i, layer) run first / last for each layer (streaming loads
    and frees layer weights there); ``activation_dtype`` is the storage dtype of hidden states;
    ``batch_tokens`` bounds the tokens of one batched layer call (see :func:`capture`);
    ``activation_device``: where hidden states are kept between layers (default: beside the embeddings);
    ``compute_device``: where the layers run when ``before_layer`` moves them there (onloading).
    Under torch.distributed each process walks its share of the samples and the statistics of
    every layer are combined over processes before ``on_layer``."""
    from . import distributed
    timer = timer or Timer()
    path, layers = find_layers(model)
    need_data = bool(kinds) and calibration is not None
    entries: list[Entry] = []
    reduce = distributed.reduce_stats if distributed.active() else None
    if need_data:
        with timer("capture"):
            entries = capture(model, distributed.shard(calibration), count_pads, layers, activation_dtype,
                              batch_tokens, activation_device, compute_device)
    for i in track(range(len(layers)), description, total=len(layers)):
        layer = layers[i]
        if before_layer is not None:
            before_layer(i, layer)
        stats = None
        if need_data and not skip_stats(i):
            with timer("statistics"):
                stats = collect_layer_stats(layer, entries, i, kinds, sets, keep_outputs=not sequential,
                                            name=f"{path}.{i}", reduce=reduce)
            dense_outputs_taken = not sequential
        else:
            dense_outputs_taken = False
        with timer("prune"):
            on_layer(i, layer, stats)
        if need_data and i < len(layers) - 1 and not dense_outputs_taken:
            with timer("propagate"):
                propagate(layer, entries, i, f"{path}.{i}")
        if after_layer is not None:
            after_layer(i, layer)
