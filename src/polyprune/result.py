"""What a pruning run produces, and the pure per-matrix step of the engine.

:func:`prune_matrix` is the method (then the optional refinement) on one weight matrix, with no
modules and no I/O. :class:`PruneResult` is what :func:`polyprune.prune` returns; it is also the
engine's default *sink*: the engine hands every pruned matrix to ``sink.add(name, mask, weight,
info)`` and takes the run's sparsity from ``sink.report()``, so a run folder written matrix by
matrix (:class:`polyprune.run.StreamSink`) and one written from memory count the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .masks import sparsity_report
from .methods import Method, MethodResult, Refiner, Spec


def prune_matrix(W: torch.Tensor, stats: Any, spec: Spec, method: Method, refiner: Refiner | None = None,
                 refine_spec: Spec | None = None) -> MethodResult:
    """One matrix: ``method`` on ``W`` [out, in] with its input statistics, then ``refiner`` on the
    method's mask (``refine_spec``: the refinement's options; default none). The info of both is kept."""
    res = method.fn(W, stats, spec)
    if refiner is None:
        return res
    info = res.info
    rspec = refine_spec or Spec(spec.sparsity, spec.pattern, {}, spec.name, spec.seed)
    res = refiner.fn(W, stats, rspec, res.kept.to(torch.bool))
    res.info = {**info, **res.info}
    return res


class Sink(Protocol):
    """Where the engine puts each pruned matrix (all tensors on the CPU, in the stored layout)."""

    def add(self, name: str, mask: torch.Tensor, weight: torch.Tensor | None = None,
            info: dict | None = None) -> None: ...

    def report(self) -> dict: ...


@dataclass
class PruneResult:
    """The engine's result, keyed by full parameter name.

    ``masks``: bool CPU masks (True = kept) in each parameter's stored shape; ``weights``: the new
    values of weight-updating methods (whole matrices, model dtype); ``stats``: kept statistics
    (``keep_stats``); ``info``: ``MethodResult.info`` per matrix (e.g. GPTQ scales); ``permutations``:
    input-channel order under which an N:M mask holds (RIA); ``record``: what ``record.json`` holds.
    With another sink (streaming) the tensors went there and only ``record`` (and ``stats``) is filled."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    info: dict[str, dict] = field(default_factory=dict)
    permutations: dict[str, torch.Tensor] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, mask: torch.Tensor, weight: torch.Tensor | None = None,
            info: dict | None = None) -> None:
        """The in-memory sink: collect one matrix."""
        self.masks[name] = mask
        if weight is not None:
            self.weights[name] = weight
        if info:
            self.info[name] = info
            if "permutation" in info:
                self.permutations[name] = torch.as_tensor(info["permutation"], dtype=torch.long)

    def report(self) -> dict:
        return sparsity_report(self.masks)
