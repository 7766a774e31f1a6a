"""Compute devices: checking ``--device`` / ``--dtype``, and layer-by-layer onloading of models larger
than the GPU.

Onloading keeps the weights on the host: the embeddings run there once, for the layer-0 inputs
(the recorded layer arguments, e.g. rotary tables, go to the device), and each decoder layer
visits the device for its statistics pass, pruning and propagation (``load``), then goes back to
the host (``release``). The engine's code path is the one of an all-resident model, so masks are
the same bit for bit.
Hidden states stay on the GPU when they fit, else in pinned host memory (``--activation-device``).
On a GPU the layers' host copies are pinned once (page-locked host memory = the decoder layers' size,
for the whole run): copies to the GPU are asynchronous and a layer comes back into its own pinned
buffers instead of a fresh host allocation per layer. A run streamed from disk (``--offload``,
:mod:`polyprune.stream`) reads each layer to the host and moves it the same way (no pinning: each
layer's host copy is read once). The memory model behind :func:`plan` is documented in
docs/benchmarks.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .model import check_device, check_dtype, find_layers, prunable_modules  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

GiB = 1 << 30
MARGIN = 1.10  # allocator slack and kernels' workspaces on top of the counted tensors


def _move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        return t.to(device)
    return t.to(device, non_blocking=device.type == "cuda")


def move_module(module: nn.Module, device: torch.device | str, skip: nn.Module | None = None) -> nn.Module:
    """Move parameters and buffers by replacing them (as accelerate does), ties kept; the subtree
    ``skip`` stays where it is. Unlike ``Module.to`` it also works on fake tensors (tests)."""
    device = torch.device(device)
    skipped = set() if skip is None else {id(m) for m in skip.modules()}
    memo: dict[int, torch.Tensor] = {}
    for mod in module.modules():
        if id(mod) in skipped:
            continue
        for k, p in mod._parameters.items():
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(_move(p.data, device), requires_grad=False)
                mod._parameters[k] = memo[id(p)]
        for k, b in mod._buffers.items():
            if b is not None:
                mod._buffers[k] = memo.setdefault(id(b), _move(b, device))
    return module


def tensor_bytes(module: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@dataclass
class Plan:
    """Bytes on the compute device, from the model's dims (see docs/benchmarks.md, memory model)."""

    outside: int  # everything outside the decoder layers (embeddings, lm_head, final norm); host when onloading
    layer: int  # the largest decoder layer's weights
    stats: int  # statistics of one layer: fp32 Hessians (c² · 4 per Linear) or vectors
    workspace: int  # one batched layer call's activations + the method's fp32 copies of one matrix
    hidden: int  # hidden states of all calibration samples (tokens · d · bytes)
    free: int

    @property
    def one_layer(self) -> int:
        """What onloading needs on the device: one layer, its statistics, workspace (hidden states aside)."""
        return int((self.layer + self.stats + self.workspace) * MARGIN)

    def all_resident(self, n_layers: int) -> int:
        return int((self.outside + n_layers * self.layer + self.stats + self.workspace + self.hidden) * MARGIN)


def plan(model: nn.Module, tokens: int, kinds: frozenset, free: int, act_bytes: int | None = None,
         batch_tokens: int = 4096) -> Plan:
    """Memory plan of pruning ``model`` with ``tokens`` calibration tokens on a device with ``free`` bytes."""
    path, layers = find_layers(model)
    layer_b = max(tensor_bytes(layer) for layer in layers)
    outside = tensor_bytes(model) - sum(tensor_bytes(layer) for layer in layers)
    mods = prunable_modules(layers[0])
    widths = [m.weight.shape[0] if type(m).__name__ == "Conv1D" else m.in_features for m in mods.values()]
    sizes = [m.weight.numel() for m in mods.values()]
    stats = 0
    if "hessian" in kinds:
        stats += sum(4 * c * c for c in widths)
    stats += sum(4 * c for c in widths) * (3 * ("sqnorm" in kinds) + 4 * ("moments" in kinds)) + 16 * sum(widths)
    p = next(model.parameters())
    act = act_bytes or p.element_size()
    d = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None) or widths[0]
    widest = max(max(widths), max(sizes) // max(widths))
    workspace = batch_tokens * (4 * d + 3 * widest) * 4 + 3 * max(sizes) * 4
    return Plan(outside, layer_b, stats, workspace, tokens * d * act, free)


def free_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 62
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def _slots(module: nn.Module):
    """``(name, store, key, tensor)`` of every parameter and buffer of ``module`` (``store``: the
    owning module's ``_parameters`` / ``_buffers``), in module order; a tied tensor once per owner."""
    for mname, mod in module.named_modules():
        for store in (mod._parameters, mod._buffers):
            for k, t in store.items():
                if t is not None:
                    yield (f"{mname}.{k}" if mname else k), store, k, t


def pin_module(module: nn.Module) -> dict[str, torch.Tensor]:
    """Replace the host tensors of ``module`` by page-locked copies, once (ties kept), so that copies to
    the GPU run asynchronously; returns them by name: the buffers :func:`write_back` fills later."""
    memo: dict[int, torch.Tensor] = {}
    host: dict[str, torch.Tensor] = {}
    for name, store, k, t in _slots(module):
        if t.device.type != "cpu":
            continue
        if id(t) not in memo:
            data = t.data if t.is_pinned() else t.data.pin_memory()
            memo[id(t)] = nn.Parameter(data, requires_grad=False) if isinstance(t, nn.Parameter) else data
        store[k] = host[name] = memo[id(t)]
    return host


def write_back(module: nn.Module, host: dict[str, torch.Tensor]) -> nn.Module:
    """Bring ``module`` back to the host into the buffers of :func:`pin_module` (an in-place copy from the
    device, no new host allocation); tensors without a matching buffer are moved as usual."""
    memo: dict[int, torch.Tensor] = {}
    for name, store, k, t in _slots(module):
        if id(t) not in memo:
            h = host.get(name)
            if h is None or h.shape != t.shape or h.dtype != t.dtype:
                moved = _move(t.data, torch.device("cpu"))
                memo[id(t)] = nn.Parameter(moved, requires_grad=False) if isinstance(t, nn.Parameter) else moved
            else:
                if h is not t:
                    with torch.no_grad():
                        h.data.copy_(t.data)  # blocking: the host buffer is whole when this returns
                memo[id(t)] = h
        store[k] = memo[id(t)]
    return module


class Onloader:
    """``layer_io`` for :func:`polyprune.prune`: each decoder layer onto ``device`` for its turn, then back
    to the host; the rest of the model stays on the host.

    On a GPU the layers' host copies are pinned once (``pin``; host memory: the layers' size, held
    for the run) and a layer coming back is copied into its own pinned buffers: no host allocation
    per layer, and every copy to the GPU is asynchronous. CPU-only runs pin nothing."""

    moves_only = True  # load/release only move tensors: passes that prune nothing may use them too

    def __init__(self, model: nn.Module, device: torch.device | str, activation_device=None,
                 pin: bool | None = None):
        self.device = torch.device(device)
        self.host = torch.device("cpu")
        self.path, self.layers = find_layers(model)
        move_module(model, self.host)  # a no-op when loaded there
        self.activation_device = torch.device(activation_device) if activation_device else self.device
        self.pin = self.device.type == "cuda" if pin is None else pin
        self.pinned: dict[int, dict[str, torch.Tensor]] = {}
        for i, layer in enumerate(self.layers if self.pin else []):
            try:
                self.pinned[i] = pin_module(layer)
            except RuntimeError as e:  # page-locked memory is limited (ulimit -l, containers): go on unpinned
                log.warning("cannot pin host memory for decoder layer %d and later (%s): their copies to %s "
                            "are synchronous", i, (str(e).strip().splitlines() or [""])[0], self.device)
                break

    def load(self, i: int, layer: nn.Module) -> None:
        move_module(layer, self.device)

    def release(self, i: int, layer: nn.Module) -> None:
        if i in self.pinned:
            write_back(layer, self.pinned[i])
        else:
            move_module(layer, self.host)


def _checked_plan(model: nn.Module, device: torch.device, tokens: int, kinds: frozenset,
                  act_bytes: int | None) -> Plan:
    """The plan on ``device``; a device too small for one decoder layer is bad input."""
    pl = plan(model, tokens, kinds, free_bytes(device), act_bytes)
    if pl.one_layer > pl.free:
        raise UserError(f"{device} has {pl.free / GiB:.1f} GiB free but pruning needs at least "
                        f"{pl.one_layer / GiB:.1f} GiB for one decoder layer ({pl.layer / GiB:.2f} GiB weights, "
                        f"{pl.stats / GiB:.2f} GiB statistics, {pl.workspace / GiB:.2f} GiB workspace): "
                        f"free the GPU, use a larger one, or --device cpu")
    return pl


def _activation_device(pl: Plan, device: torch.device, requested, room: int) -> torch.device:
    """``requested`` (``--activation-device``), or on ``auto`` the GPU when the hidden states fit in
    ``room`` bytes, else the (pinned) host."""
    if requested in (None, "", "auto"):
        return device if pl.hidden * MARGIN <= room else torch.device("cpu")
    return check_device(requested)


def place_streamed(model: nn.Module, device: torch.device, calibration, method: str, options: dict,
                   activation_device=None, act_bytes: int | None = None) -> torch.device:
    """Where the hidden states of a run streamed from disk wait (its layers visit ``device`` one at a
    time, read from the checkpoint to the host first); ``model`` is the meta-device skeleton."""
    from .calibration import as_calibration
    from .methods import stat_kinds
    kinds = stat_kinds(method, options.get("refine"))
    tokens = 0 if calibration is None or not kinds else sum(s.n_tokens for s in as_calibration(calibration).samples)
    pl = _checked_plan(model, device, tokens, kinds, act_bytes)
    act = _activation_device(pl, device, activation_device, pl.free - pl.one_layer)
    log.info("streamed placement on %s: layer-by-layer from disk, hidden states on %s (%.2f GiB free; one layer "
             "needs %.2f GiB, hidden states %.2f GiB)", device, act, pl.free / GiB, pl.one_layer / GiB,
             pl.hidden / GiB)
    return act


def place(model: nn.Module, device: torch.device, tokens: int, kinds: frozenset, onload: str = "auto",
          activation_device: str | None = None, act_bytes: int | None = None):
    """Put a host-loaded model where it will be pruned. Returns ``(layer_io or None, activation device)``.

    ``onload``: ``auto`` (onload when the whole model and its activations would not fit), ``always``
    or ``never``. ``activation_device``: ``auto`` / None (the GPU when the hidden states fit beside
    one layer, else pinned host memory), ``cpu`` or a device."""
    if onload not in ("auto", "always", "never"):
        raise UserError(f"--onload {onload!r}: use auto, always or never")
    if device.type == "cpu":
        if onload == "always":
            return Onloader(model, device, "cpu"), torch.device("cpu")
        return None, None
    n_layers = len(find_layers(model)[1])
    pl = _checked_plan(model, device, tokens, kinds, act_bytes)
    resident = onload == "never" or (onload == "auto" and pl.all_resident(n_layers) <= pl.free)
    room = pl.free - (pl.all_resident(n_layers) - int(pl.hidden * MARGIN) if resident else pl.one_layer)
    act = _activation_device(pl, device, activation_device, room)
    log.info("placement on %s: %s, hidden states on %s (%.2f GiB free; one layer needs %.2f GiB, "
             "hidden states %.2f GiB)", device, "all layers resident" if resident else "layer-by-layer onloading",
             act, pl.free / GiB, pl.one_layer / GiB, pl.hidden / GiB)
    if resident:
        move_module(model, device)
        return None, act
    return Onloader(model, device, act), act
