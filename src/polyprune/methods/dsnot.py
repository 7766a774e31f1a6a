"""DSnoT (Zhang et al., ICLR 2024): training-free refinement of any initial mask (``--refine dsnot``).

Per output row i the expected reconstruction error of the pruned weights is
ε_i = Σ_{j pruned} W_ij·μ_j (μ = mean input). While |ε_i| > ``threshold`` (at most ``max_cycles``
swaps): grow the pruned weight with the sign of ε_i and the largest |W_ij·μ_j| / Var(x_j)^p
(``var_power`` p = 1 as the reference), and prune the kept weight with the lowest Wanda score
|W|·‖X‖ whose W·μ has the opposite sign (unstructured), or the lowest-Wanda kept weight of the grown
weight's group of M (N:M), so every row (every group) keeps its number of pruned weights exactly.

Scale of ε: by default μ is the reference's per-sample *sum* over tokens averaged over samples
(μ_token · tokens/sample), so ``threshold`` = 0.1 means what it means in the reference;
``error_scale='token'`` uses the per-token mean instead.

Differences from the reference, on purpose: a swap is accepted only if ε keeps its initial sign and
|ε| shrinks (``same_sign``; the reference's unstructured branch never checks the sign because its
``--without_same_sign`` flag parses as always true; its N:M branch checks the sign only, so a swap there
may grow |ε|), which makes |ε_i| decrease monotonically; candidates are
restricted to weights whose W·μ has the useful sign (the reference walks past them once exhausted); no
sub-layer is skipped by default (the reference skips ``mlp.*``: give ``skip='mlp'``).
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..options import Bool, Int, Number, Strict
from . import MethodResult, Spec, register_refiner


def _sorted_candidates(key: torch.Tensor, valid: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: column indices of ``valid`` entries ordered by ``key`` (stable), and their count."""
    fill = -float("inf") if descending else float("inf")
    k = torch.where(valid, key, torch.full_like(key, fill))
    order = torch.sort(k, dim=1, descending=descending, stable=True)[1]
    return order, valid.sum(dim=1)


def expected_error(W: torch.Tensor, mu: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """ε_i = Σ_{j pruned} W_ij·μ_j, per row (float64)."""
    c = W.to(torch.float64) * mu.to(torch.float64).reshape(1, -1)
    return (c * (~kept)).sum(dim=1)


def dsnot_refine(W: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, feature_norm: torch.Tensor,
                 kept: torch.Tensor, m: int = 0, threshold: float = 0.1, max_cycles: int = 50,
                 var_power: float = 1.0, same_sign: bool = True) -> tuple[torch.Tensor, int]:
    """Refined kept mask (True = kept) and the number of swaps. ``m`` > 0: N:M groups of ``m``
    consecutive columns keep their pruned count; else every row keeps its pruned count."""
    W64 = W.to(torch.float64)
    contrib = W64 * mu.to(torch.float64).reshape(1, -1)  # W·μ
    wanda = W.abs().to(torch.float64) * feature_norm.to(torch.float64).reshape(1, -1)
    v = var.to(torch.float64).clamp_min(1e-20).reshape(1, -1)
    grow_metric = contrib / v ** var_power
    kept = kept.clone().to(torch.bool)
    init_pruned = ~kept
    rows, cols = W.shape
    dev = W.device
    ar = torch.arange(rows, device=dev)
    eps = (contrib * init_pruned).sum(dim=1)
    sign0 = torch.sign(eps)

    # growth candidates: initially pruned, W·μ with the sign of ε; largest |metric| first
    grow_pos, n_gp = _sorted_candidates(grow_metric, init_pruned & (contrib > 0), descending=True)
    grow_neg, n_gn = _sorted_candidates(grow_metric, init_pruned & (contrib < 0), descending=False)
    p_gp = torch.zeros(rows, dtype=torch.long, device=dev)
    p_gn = torch.zeros(rows, dtype=torch.long, device=dev)
    if not m:  # prune candidates: initially kept, W·μ of the opposite sign, lowest Wanda first
        prune_neg, n_pn = _sorted_candidates(wanda, kept & (contrib < 0), descending=False)
        prune_pos, n_pp = _sorted_candidates(wanda, kept & (contrib > 0), descending=False)
        p_pn = torch.zeros(rows, dtype=torch.long, device=dev)
        p_pp = torch.zeros(rows, dtype=torch.long, device=dev)
    else:
        prunable = kept.clone()  # initially kept and not yet pruned by a swap

    active = torch.ones(rows, dtype=torch.bool, device=dev)
    swaps = torch.zeros((), dtype=torch.long, device=dev)  # counted on the device: read once at the end
    for _ in range(int(max_cycles)):
        active &= eps.abs() > threshold
        if not active.any():
            break
        pos = eps > 0
        g_idx = torch.where(pos, grow_pos[ar, p_gp.clamp(max=cols - 1)], grow_neg[ar, p_gn.clamp(max=cols - 1)])
        g_ok = torch.where(pos, p_gp < n_gp, p_gn < n_gn)
        if not m:
            q_idx = torch.where(pos, prune_neg[ar, p_pn.clamp(max=cols - 1)], prune_pos[ar, p_pp.clamp(max=cols - 1)])
            q_ok = torch.where(pos, p_pn < n_pn, p_pp < n_pp)
        else:
            start = g_idx - g_idx % m
            blk = start.reshape(-1, 1) + torch.arange(m, device=dev).reshape(1, -1)
            bw = torch.where(prunable[ar.reshape(-1, 1), blk], wanda[ar.reshape(-1, 1), blk],
                             torch.full((rows, m), float("inf"), dtype=torch.float64, device=dev))
            off = torch.argmin(bw, dim=1)
            q_idx = start + off
            q_ok = torch.isfinite(bw[ar, off])
        after = eps - contrib[ar, g_idx] + contrib[ar, q_idx]
        ok = active & g_ok & q_ok
        if same_sign:
            ok &= (torch.sign(after) == sign0) & (after.abs() < eps.abs())
        active = ok  # a row whose swap is rejected stops (as the reference); none left: the next test ends it
        # masked updates of every row (a row not swapping writes back its own values): no boolean
        # indexing, so no host sync per cycle; g (pruned) and q (kept) differ in every swapping row
        kept[ar, g_idx] = kept[ar, g_idx] | ok
        kept[ar, q_idx] = kept[ar, q_idx] & ~ok
        eps = torch.where(ok, after, eps)
        swaps += ok.sum()
        if not m:
            p_gp += (ok & pos).long()
            p_gn += (ok & ~pos).long()
            p_pn += (ok & pos).long()
            p_pp += (ok & ~pos).long()
        else:
            p_gp += (ok & pos).long()
            p_gn += (ok & ~pos).long()
            prunable[ar, q_idx] = prunable[ar, q_idx] & ~ok
    return kept, int(swaps.item())


class DSnoTOptions(Strict):
    threshold: Number = 0.1
    max_cycles: Int = 50
    var_power: Number = 1.0
    same_sign: Bool = True
    error_scale: str = "sample"  # "sample" (the reference) or "token"
    skip: str | None = ""  # comma-separated module names left as the method chose, e.g. "down_proj"


@register_refiner("dsnot", needs=("moments", "sqnorm"), options=DSnoTOptions)
def dsnot(W: torch.Tensor, stats, spec: Spec, kept: torch.Tensor) -> MethodResult:
    """DSnoT: swap pruned/kept weights per row to drive the expected error Σ_pruned W·μ towards 0."""
    skip = [s for s in str(spec.options["skip"] or "").split(",") if s]
    if skip and any(f".{s}." in f".{spec.name}" for s in skip):
        return MethodResult(kept)
    st = stats.target
    if st.mean is None or st.scaler_row is None:
        raise UserError("dsnot needs running mean/variance and norms of the inputs (statistics kinds "
                        "'moments' and 'sqnorm'): run it through pp.prune(..., refine='dsnot')")
    scale = spec.options["error_scale"]
    if scale not in ("sample", "token"):
        raise UserError(f"dsnot error_scale {scale!r}: use 'sample' (the reference) or 'token'")
    mu = st.mean.float()
    if scale == "sample":
        mu = mu * (st.ntokens / max(st.nsamples, 1))
    pat = spec.pattern
    m = pat.m if pat.structured else 0
    if m:
        g = (~kept).reshape(kept.shape[0], -1, m).sum(-1)
        if not bool((g == pat.n).all()):
            raise UserError(f"dsnot on {spec.name}: the initial mask is not {pat} in column order (a channel "
                            f"permutation?): use ria with -o permute=false")
    new, swaps = dsnot_refine(W, mu, st.variance, st.feature_norm(), kept, m, spec.options["threshold"],
                              spec.options["max_cycles"], spec.options["var_power"], spec.options["same_sign"])
    return MethodResult(new, info={"dsnot_swaps": swaps})
