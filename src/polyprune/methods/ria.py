"""RIA, relative importance and activations (Zhang et al., ICLR 2024).

Score: (|W_ij| / Σ_k |W_kj| + |W_ij| / Σ_k |W_ik|) · ‖X_j‖^a, a = 0.5 (column sum over output rows,
row sum over input columns). Unstructured: compared within the whole matrix by default (the
reference's threshold rule: prune ``<=`` the sorted value at int(n·s)), per row with ``scope='row'``.
N:M: channel permutation — input channels sorted by their column-sum score are dealt zig-zag over the
M slots of the groups, then every slot is refined by a linear assignment (scipy's
``linear_sum_assignment``) that maximises the kept score; the permutation is returned in
``info['permutation']`` (``mask[:, perm]`` is N:M) and saved in the run folder.
"""
from __future__ import annotations

import torch

from ..masks import build_pruned, nm_pruned
from ..options import Bool, Int, Number, Strict
from . import MethodResult, Spec, register


def ria_scores(W: torch.Tensor, feature_norm: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """(|W|/column sums + |W|/row sums)·‖X‖^a; an all-zero row or column contributes 0 (not NaN)."""
    A = W.abs()
    col = A.sum(dim=0, keepdim=True)
    row = A.sum(dim=1, keepdim=True)
    rel = torch.where(col > 0, A / col.clamp_min(torch.finfo(A.dtype).tiny), torch.zeros_like(A)) + \
        torch.where(row > 0, A / row.clamp_min(torch.finfo(A.dtype).tiny), torch.zeros_like(A))
    return rel * feature_norm.reshape(1, -1).to(A.dtype) ** a


def kept_nm_score(scores: torch.Tensor, n: int, m: int) -> float:
    """Total score kept by the N:M mask (the m − n highest of every group of m columns)."""
    g = scores.reshape(scores.shape[0], -1, m)
    return torch.topk(g, m - n, dim=-1).values.sum().item()


def zigzag_order(column_score: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's heuristic channel reallocation: columns sorted ascending by score are cut into m chunks;
    chunk k fills slot k of every group, every second chunk reversed (zig-zag). Returns ``index`` with
    ``index[p]`` = original column at permuted position p."""
    c = column_score.numel()
    order = torch.sort(column_score, stable=True)[1]
    index = torch.empty_like(order)
    for k in range(m):
        chunk = order[c * k // m: c * (k + 1) // m]
        index[k::m] = chunk.flip(0) if k % 2 == 1 else chunk
    return index


def slot_assignment_scores(scores: torch.Tensor, n: int, m: int, slot: int, chunk: int = 32) -> torch.Tensor:
    """S[g, r] = kept score of group g when its column in ``slot`` is replaced by group r's column in
    that slot. Uses: top-(m−n) sum of {others, x} = Σ top-(k−1) others + max(x, k-th largest other)."""
    rows, cols = scores.shape
    G = cols // m
    grp = scores.reshape(rows, G, m)
    others = torch.cat([grp[:, :, :slot], grp[:, :, slot + 1:]], dim=2)  # [rows, G, m-1]
    k = m - n
    top = torch.sort(others, dim=2, descending=True).values
    base = top[:, :, :k - 1].sum(dim=(0, 2))  # [G]
    kth = top[:, :, k - 1]  # [rows, G]
    x = grp[:, :, slot]  # [rows, G] candidates r
    out = torch.empty(G, G, dtype=torch.float64, device=scores.device)
    for g0 in range(0, G, chunk):
        b = kth[:, g0:g0 + chunk].t().unsqueeze(2)  # [g, rows, 1]
        out[g0:g0 + chunk] = torch.maximum(x.unsqueeze(0), b).sum(dim=1).to(torch.float64)  # [g, G]
    return out + base.to(torch.float64).reshape(-1, 1)


def lsa_refine(scores: torch.Tensor, index: torch.Tensor, n: int, m: int, blocks: int = 1) -> torch.Tensor:
    """One linear-assignment round per slot (as the reference): the slot-s columns are reassigned to
    groups to maximise the kept N:M score, within ``blocks`` contiguous parts of the permuted order."""
    from scipy.optimize import linear_sum_assignment
    index = index.clone()
    c = index.numel()
    for slot in range(m):
        for b in range(blocks):
            lo, hi = b * c // blocks, (b + 1) * c // blocks
            part = index[lo:hi]
            if part.numel() % m or part.numel() < 2 * m:
                continue
            S = slot_assignment_scores(scores[:, part], n, m, slot)
            _, col = linear_sum_assignment(S.cpu().numpy(), maximize=True)  # scipy: on the host
            idx = torch.arange(part.numel(), device=index.device)
            groups = torch.arange(part.numel() // m, device=index.device)
            idx[groups * m + slot] = torch.as_tensor(col, dtype=torch.long, device=index.device) * m + slot
            index[lo:hi] = part[idx]
    return index


def channel_permutation(scores: torch.Tensor, n: int, m: int, lsa: bool = True, blocks: int = 1) -> torch.Tensor:
    """Input-channel order under which the N:M mask keeps the most score (zig-zag, then LSA)."""
    index = zigzag_order(scores.sum(dim=0), m)
    if lsa:
        index = lsa_refine(scores, index, n, m, blocks)
    return index


class RIAOptions(Strict):
    a: Number = 0.5
    scope: str = "matrix"
    reference_threshold: Bool = True
    permute: Bool = True
    lsa: Bool = True
    lsa_blocks: Int = 1


@register("ria", needs=("sqnorm",), options=RIAOptions)
def ria(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """RIA: (|W|/Σ_col + |W|/Σ_row)·‖X‖^a (a = 0.5); matrix-wide comparison (``scope='row'``: per row);
    N:M with channel permutation (``permute``, ``lsa``, ``lsa_blocks``) stored in info['permutation']
    when it keeps more score than the identity order."""
    scores = ria_scores(W, stats.target.feature_norm(), spec.options["a"])
    pat = spec.pattern
    if not pat.structured:
        pruned = build_pruned(scores, spec.sparsity, pat, spec.options["scope"],
                              spec.options["reference_threshold"])
        return MethodResult(~pruned)
    if pat.n == 0:
        return MethodResult(torch.ones_like(W, dtype=torch.bool))
    plain = nm_pruned(scores, pat.n, pat.m)
    if not spec.options["permute"] or W.shape[1] < 2 * pat.m:
        return MethodResult(~plain)
    perm = channel_permutation(scores, pat.n, pat.m, spec.options["lsa"], spec.options["lsa_blocks"])
    before = kept_nm_score(scores, pat.n, pat.m)
    after = kept_nm_score(scores[:, perm], pat.n, pat.m)
    info = {"kept_score_identity": before, "kept_score_permuted": after}
    if after <= before:
        return MethodResult(~plain, info=info)
    pruned = torch.zeros_like(plain)
    pruned[:, perm] = nm_pruned(scores[:, perm], pat.n, pat.m)
    return MethodResult(~pruned, info={**info, "permutation": perm})
