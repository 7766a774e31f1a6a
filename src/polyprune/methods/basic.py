"""Magnitude and random pruning (no calibration)."""
from __future__ import annotations

import zlib

import torch

from ..masks import build_pruned
from ..options import Bool, Strict
from . import MethodResult, Spec, register


class MagnitudeOptions(Strict):
    scope: str = "matrix"
    reference_threshold: Bool = True


class RandomOptions(Strict):
    scope: str = "row"


@register("magnitude", options=MagnitudeOptions)
def magnitude(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """|W|, compared within the whole matrix (``scope='row'``: per output row). By default the
    locuslab rule: prune ``<=`` the sorted value at int(n·s) (one weight more, plus ties);
    ``reference_threshold=False`` prunes exactly int(n·s) (stable sort)."""
    pruned = build_pruned(W.abs(), spec.sparsity, spec.pattern, spec.options["scope"],
                          spec.options["reference_threshold"])
    return MethodResult(~pruned)


@register("random", options=RandomOptions)
def random_(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """Uniform random scores from a generator seeded by (seed, matrix name): reproducible."""
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + zlib.crc32(spec.name.encode()))
    scores = torch.rand(W.shape, generator=g).to(W.device)  # drawn on the CPU: the same scores on every device
    return MethodResult(~build_pruned(scores, spec.sparsity, spec.pattern, spec.options["scope"]))
