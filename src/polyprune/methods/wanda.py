"""Wanda (Sun et al. 2024) and the contrastive score of Kim et al. (2024, Eq. 4)."""
from __future__ import annotations

import torch

from ..masks import build_pruned
from ..options import Bool, Number, Strict
from . import MethodResult, Spec, register


def wanda_scores(W: torch.Tensor, feature_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖."""
    a, n = W.abs(), feature_norm.reshape(1, -1)
    return a.mul_(n) if torch.result_type(a, n) == a.dtype else a * n  # in place: one temporary less


def _mask_given_alpha(alpha, sorted_vals, metric, cumsum, row_sum):
    """locuslab's ``return_given_alpha``: prune per row up to the sorted value where the cumulative
    score reaches ``alpha`` × the row total."""
    below = cumsum <= (row_sum * alpha).reshape(-1, 1)
    count = below.sum(dim=1, keepdim=True)
    thres = torch.gather(sorted_vals, 1, (count - 1).clamp(min=0))
    thres = torch.where(count > 0, thres, torch.full_like(thres, -float("inf")))
    pruned = metric <= thres
    return pruned, pruned.sum().item() / pruned.numel()


def variant_pruned(metric: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's ``use_variant``: bisection on α so the whole matrix reaches ``sparsity``."""
    sorted_vals = torch.sort(metric, dim=-1, stable=True)[0]
    cumsum = torch.cumsum(sorted_vals, dim=1)
    row_sum = metric.sum(dim=1)
    alpha, lo, hi = 0.4, 0.0, 0.8
    pruned, cur = _mask_given_alpha(alpha, sorted_vals, metric, cumsum, row_sum)
    while abs(cur - sparsity) > 0.001 and hi - lo >= 0.001:
        if cur > sparsity:
            alpha, hi = (alpha + lo) / 2.0, alpha
        else:
            alpha, lo = (alpha + hi) / 2.0, alpha
        pruned, cur = _mask_given_alpha(alpha, sorted_vals, metric, cumsum, row_sum)
    return pruned


def prune_scores(scores: torch.Tensor, spec: Spec) -> torch.Tensor:
    """Kept mask from Wanda-style scores: per-row lowest int(in·s), N:M groups, or the α variant."""
    if spec.options["use_variant"] and not spec.pattern.structured:
        return ~variant_pruned(scores, spec.sparsity)
    return ~build_pruned(scores, spec.sparsity, spec.pattern, "row")


class WandaOptions(Strict):
    use_variant: Bool = False


class ContrastiveOptions(WandaOptions):
    eps: Number = 1e-8


@register("wanda", needs=("sqnorm",), options=WandaOptions)
def wanda(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """Score |W|·‖X‖ compared within each output row (lowest int(in·s) pruned, stable sort)."""
    return MethodResult(prune_scores(wanda_scores(W, stats.target.feature_norm()), spec))


@register("wanda-contrastive", needs=("sqnorm",), sets=("target", "contrast"),
          options=ContrastiveOptions)
def wanda_contrastive(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """Kim et al. Eq. 4: |W|·‖X‖·‖X‖/(‖Z‖ + ε), X = the ``target`` set, Z = the ``contrast`` set."""
    x = stats["target"].feature_norm()
    z = stats["contrast"].feature_norm()
    norm = x * x / (z + spec.options["eps"])
    return MethodResult(prune_scores(wanda_scores(W, norm), spec))
