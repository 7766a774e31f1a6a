"""The pruning engine: ``pp.prune(model, calibration, method=..., sparsity=..., pattern=...)``."""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
from torch import nn

from .calibration import Calibration, as_calibration
from .collect import walk
from .errors import UserError
from .allocation import get_allocation, is_uniform, walk_placement
from .config import check_run
from .masks import Pattern, check_sparsity, parse_pattern, to_stored, weight_matrix
from .methods import Spec, get_method, get_refiner
from .model import find_layers, prunable_modules
from .progress import Timer, peak_memory
from .result import PruneResult, Sink, prune_matrix

log = logging.getLogger(__name__)


def normalise_layer_list(keep: Sequence[int] | str | None, n_layers: int) -> set[int]:
    """``[0, -1]`` or ``"0,-1"`` → {0, n-1}; out-of-range indices are an error."""
    if keep is None or keep == "":
        return set()
    items = [int(x) for x in keep.split(",")] if isinstance(keep, str) else [int(x) for x in keep]
    out = set()
    for i in items:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise UserError(f"layer index {i} is out of range for a model with {n_layers} decoder layers")
        out.add(j)
    return out


def prune(model: nn.Module, calibration: Any = None, method: str = "wanda", sparsity: float | None = 0.5,
          pattern: str = "unstructured", *, seed: int = 0, sequential: bool = True, count_pads: bool = False,
          keep_dense_layers: Sequence[int] | str | None = None, layer_sparsity: Sequence[float] | None = None,
          keep_stats: Sequence[str] | bool = False, allocation: str | None = None,
          allocation_options: dict | None = None, refine: str | None = None, refine_options: dict | None = None,
          layer_io: Any = None, activation_dtype: torch.dtype | None = None, batch_tokens: int | None = None,
          activation_device: torch.device | str | None = None, method_options: dict | None = None,
          sink: Sink | None = None) -> PruneResult:
    """Prune ``model`` in place, layer by layer; returns a :class:`~polyprune.result.PruneResult`.

    ``calibration``: LongTensor [n, L], list of dicts {input_ids, attention_mask}, or a Calibration
    (needed by methods that use activations). ``pattern``: ``unstructured`` or ``N:M``.
    ``sequential``: statistics of layer l come from the already-pruned layers < l (the references);
    False: all statistics from the dense model. ``count_pads``: let pad tokens into statistics
    (the references' behaviour). ``keep_dense_layers``: decoder layers left unpruned.
    ``layer_sparsity``: one target per decoder layer (overrides ``sparsity``). ``allocation``: a
    registered layer-wise sparsity allocation (e.g. ``owl``). ``keep_stats``: True or a list of
    statistics kinds to keep (returned in ``.stats``). ``refine``: a registered mask refinement
    applied to every matrix after the method (e.g. ``dsnot``), with ``refine_options``.
    ``layer_io``: an object with ``load(i, layer)`` / ``release(i, layer)`` called around
    each decoder layer (streaming from disk, see ``polyprune.stream``); ``activation_dtype``: storage
    dtype of the hidden states between layers (statistics stay fp32); ``batch_tokens``: tokens per
    batched layer call for samples of one length (default 4096; 1 = one sample per call, the least
    activation memory; masks are identical either way); ``activation_device``: where the hidden
    states are kept (e.g. ``cpu`` while layers are onloaded to a GPU, see ``polyprune.onload``).
    ``method_options``: the method's own options (e.g. ``{"blocksize": 64}``), apart from the engine's.
    ``sink``: where each matrix's mask, new weights and info go as soon as it is pruned (see
    :class:`polyprune.run.StreamSink`); by default the returned result collects them.
    Methods run on the device of the weights; masks and kept values are stored on the CPU."""
    t_start = time.perf_counter()
    method_options = check_run(method, sparsity, pattern, method_options, refine=refine,
                               refine_options=refine_options, allocation=allocation,
                               allocation_options=allocation_options)  # the rules a RunConfig also applies
    meth = get_method(method)
    pat = parse_pattern(pattern)
    sparsity = pat.sparsity if pat.structured else float(sparsity)
    path, layers = find_layers(model)
    n_layers = len(layers)
    keep = normalise_layer_list(keep_dense_layers, n_layers)
    extra = set()
    if keep_stats:
        extra = {"sqnorm"} if keep_stats is True else set(keep_stats)
    ref = get_refiner(refine) if refine else None
    kinds = frozenset(set(meth.needs) | extra | (set(ref.needs) if ref else set()))
    cal: Calibration | None = None
    if kinds:
        if calibration is None:
            who = f"method {method!r}" if meth.needs or ref else "keep_stats"
            raise UserError(f"{who} needs calibration data: give --calibration-file or a recipe")
        cal = as_calibration(calibration)
        missing = [s for s in meth.sets if s not in cal.sets]
        if missing:
            raise UserError(f"method {method!r} needs calibration set {missing[0]!r} "
                            f"(have {', '.join(cal.sets)}): give it (e.g. --contrast)")
        extra_sets = [s for s in cal.sets if s not in meth.sets and not extra]
        if extra_sets and meth.sets:
            raise UserError(f"calibration set {extra_sets[0]!r} is not used by method {method!r}: "
                            f"drop it (a contrast set needs --method wanda-contrastive)")
    elif calibration is not None:
        log.info("method %s uses no calibration data; the calibration is ignored", method)

    if cal is None and calibration is not None and not is_uniform(allocation):
        cal = as_calibration(calibration)  # data-driven allocations (e.g. owl) with a data-free method
    timer = Timer()
    compute_device = getattr(layer_io, "device", None)
    placement = None
    if layer_io is not None and getattr(layer_io, "moves_only", False) or activation_device is not None:
        # a data-driven allocation's dense pass walks the layers where this run does
        placement = {"activation_device": activation_device, "compute_device": compute_device, **(
            {"before_layer": layer_io.load, "after_layer": layer_io.release}
            if layer_io is not None and getattr(layer_io, "moves_only", False) else {})}
    with walk_placement(placement):
        targets = _layer_targets(model, cal, sparsity, pat, layer_sparsity, allocation, allocation_options,
                                 n_layers, count_pads, timer)
    layer_pats = [pat] * n_layers
    if pat.structured and layer_sparsity is None and not is_uniform(allocation):
        layer_pats = [Pattern(int(round(t * pat.m)), pat.m) for t in targets]  # N varies per layer
    result = PruneResult()
    out: Sink = result if sink is None else sink
    sets = tuple(meth.sets) if (meth.sets and not extra) else None

    def on_layer(i: int, layer: nn.Module, stats) -> None:
        if i in keep:
            return
        for mname, mod in prunable_modules(layer).items():  # first: a NaN weight also poisons statistics
            if not torch.isfinite(mod.weight).all():
                raise UserError(f"non-finite weights (NaN or inf) in {path}.{i}.{mname}.weight: the checkpoint "
                                f"is damaged; re-download or re-convert the model")
        for mname, mod in prunable_modules(layer).items():
            full = f"{path}.{i}.{mname}.weight"
            # the method runs where the weight is (the GPU when the layer is there); only masks, kept
            # values and method info come to the CPU, matrix by matrix
            W = weight_matrix(mod).detach().to(torch.float32, copy=True)  # one fp32 copy, also from bf16
            st = None
            if stats is not None:
                st = stats[mname]
                if meth.needs:
                    _check_finite(st, full)
                if extra:
                    result.stats[full] = {k: {n: t.cpu() for n, t in v.tensors().items()} for k, v in st.items()}
            spec = Spec(targets[i], layer_pats[i], {**method_options}, full, seed)
            rspec = Spec(targets[i], layer_pats[i], {**(refine_options or {})}, full, seed) if ref else None
            res = prune_matrix(W, st, spec, meth, ref, rspec)
            info = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in res.info.items()}
            kept = res.kept.to(torch.bool)
            with torch.no_grad():
                new = res.weight if res.weight is not None else W.mul_(kept)  # W: this loop's own copy
                mod.weight.data.copy_(to_stored(mod, new.to(mod.weight.dtype)))
            weight = None if res.weight is None else to_stored(mod, res.weight.to(mod.weight.dtype)).cpu()
            out.add(full, to_stored(mod, kept).cpu(), weight, info)

    walk(model, cal, kinds, sets, on_layer, sequential=sequential, count_pads=count_pads, timer=timer,
         skip_stats=lambda i: i in keep and not extra, description=f"{method} {pat if pat.structured else sparsity}",
         before_layer=None if layer_io is None else layer_io.load,
         after_layer=None if layer_io is None else layer_io.release,
         activation_dtype=activation_dtype, batch_tokens=batch_tokens, activation_device=activation_device,
         compute_device=compute_device)
    rep = out.report()  # counted from what the sink got (written, for a streaming sink)
    result.record = {
        "method": method, "sparsity_target": sparsity, "pattern": str(pat), "achieved_sparsity": rep["overall"],
        "per_matrix": rep["per_matrix"], "pruned_weights": rep["pruned"], "prunable_weights": rep["total"],
        "layer_sparsity": targets, "keep_dense_layers": sorted(keep),
        "refine": refine, "refine_options": dict(refine_options or {}),
        "layer_patterns": [str(p) for p in layer_pats] if pat.structured else None,
        "timings_s": {**timer.phases, "total": time.perf_counter() - t_start},
        "memory": peak_memory(),
        "calibration": None if cal is None else {
            "samples": len(cal), "tokens": sum(s.n_tokens for s in cal.samples),
            "tokens_per_set_and_language": cal.token_counts(), "count_pads": count_pads},
    }
    return result


def _check_finite(st, name: str) -> None:
    for set_name, ms in st.items():
        for t in (ms.scaler_row, ms.H):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise UserError(f"non-finite input statistics at {name} (set {set_name}): use float32 "
                                f"(--dtype float32) or check the calibration tokens")


def _layer_targets(model, cal, sparsity, pat, layer_sparsity, allocation, allocation_options, n_layers,
                   count_pads, timer) -> list[float]:
    if layer_sparsity is not None:
        if len(layer_sparsity) != n_layers:
            raise UserError(f"layer_sparsity has {len(layer_sparsity)} values for {n_layers} decoder layers")
        return [check_sparsity(s) for s in layer_sparsity]
    if is_uniform(allocation):
        return [sparsity] * n_layers
    alloc = get_allocation(allocation)
    with timer("allocation"):
        out = alloc(model, cal, sparsity, pat, count_pads=count_pads, **(allocation_options or {}))
    return [float(s) for s in out]
