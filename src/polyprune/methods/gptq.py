"""GPTQ (Frantar et al. 2023) and joint SparseGPT pruning + GPTQ quantisation.

Both share the Hessian statistics and the damped inverse-Hessian factor with SparseGPT
(``stats`` kind ``hessian``, :func:`polyprune.methods.sparsegpt.inverse_hessian_factor`).
The loop follows IST-DASLab/gptq ``fasterquant``: blocks of columns, each column rounded to the
grid and its error spread over the remaining columns with the rows of the inverse-Hessian factor.
Grid parameters per group are taken when the walk reaches the group's first column, from the
weights as updated up to the start of the current block (the reference's ``W[:, i:i+g]``); with
``act_order`` the columns are visited by decreasing ``diag(H)`` and the groups are fixed up front
in the original column order (the reference's ``--static-groups``; compressed-tensors
``actorder: weight``), so no column permutation needs storing.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..options import Bool, Int, Number, Strict
from ..quant import QuantSpec, find_params, quant_spec, quantize
from . import MethodResult, Spec, register
from .sparsegpt import inverse_hessian_factor, obs_sweep


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, blocksize: int = 128, percdamp: float = 0.01,
                  act_order: bool = False, sparsity: float = 0.0, prunen: int = 0, prunem: int = 0,
                  reference_threshold: bool = True, name: str = "") -> dict[str, torch.Tensor]:
    """Quantise ``W`` [out, in] with the Hessian ``H`` [in, in]; optionally prune jointly (SparseGPT's
    mask selection per block by w²/d², or N:M groups, before each column is rounded).

    Returns ``{"weight": dequantised W, "pruned": bool mask, "scale": [out, groups],
    "zero": [out, groups]}``; ``weight`` lies exactly on the grid and is 0 where pruned."""
    W = W.float()
    rows, columns = W.shape
    prune = sparsity > 0 or prunem > 0
    if prune and act_order:
        raise UserError("act_order is not available together with pruning: drop act_order or quantise "
                        "after pruning with method gptq")
    gs = spec.group_size
    ngroups = spec.groups(columns)
    scale = torch.zeros(rows, ngroups, device=W.device)
    zero = torch.zeros(rows, ngroups, device=W.device)
    if gs is None:  # one grid per row from the weights as given (before dead columns are zeroed)
        s, z = find_params(W, spec)
        scale[:], zero[:] = s, z
    dead = torch.diag(H) == 0
    Wd = W.clone()
    Wd.masked_fill_(dead.reshape(1, -1), 0)
    if gs is not None and act_order:  # static groups in the original column order
        for g in range(ngroups):
            s, z = find_params(Wd[:, g * gs:(g + 1) * gs], spec)
            scale[:, g:g + 1], zero[:, g:g + 1] = s, z
    perm = None
    if act_order:
        diag = torch.diag(H).clone()
        diag.masked_fill_(dead, 1)
        perm = torch.argsort(diag, descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    W, Hinv = inverse_hessian_factor(W, H, percdamp, name)
    col_group = torch.arange(columns, device=W.device) // gs if gs is not None else \
        torch.zeros(columns, dtype=torch.long, device=W.device)
    if perm is not None:
        col_group = col_group[perm]
    col_group = col_group.tolist()  # one host transfer, not one sync per column

    def round_column(col: int, q: torch.Tensor, W_now: torch.Tensor) -> torch.Tensor:
        if gs is not None and not act_order and col % gs == 0:  # the group's grid, from W as updated so far
            s, z = find_params(W_now[:, col:col + gs], spec)
            scale[:, col // gs:col // gs + 1], zero[:, col // gs:col // gs + 1] = s, z
        g = col_group[col]
        return quantize(q.unsqueeze(1), scale[:, g:g + 1], zero[:, g:g + 1], spec.maxq).flatten()

    pruned, Q = obs_sweep(W, Hinv, sparsity if not prunem else 0.0, prunen, prunem, blocksize,
                          reference_threshold, round_column)
    if perm is not None:
        inv = torch.argsort(perm)
        Q, pruned = Q[:, inv], pruned[:, inv]
    return {"weight": Q, "pruned": pruned, "scale": scale, "zero": zero}


def _spec_from(spec: Spec) -> QuantSpec:
    o = spec.options
    return quant_spec(o["bits"], o["group_size"], o["sym"])


def _info(out: dict, q: QuantSpec, act_order: bool) -> dict:
    return {"scale": out["scale"], "zero": out["zero"].to(torch.uint8), "bits": q.bits,
            "group_size": q.group_size or -1, "sym": q.sym, "act_order": act_order}


class QuantOptions(Strict):
    bits: Int = 4
    group_size: Int | None = 128  # -1 or None: one group per row
    sym: Bool = True
    blocksize: Int = 128
    percdamp: Number = 0.01


class GPTQOptions(QuantOptions):
    act_order: Bool = False


class SparseGPTQOptions(QuantOptions):
    reference_threshold: Bool = True


@register("gptq", needs=("hessian",), updates_weights=True, options=GPTQOptions)
def gptq(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """GPTQ weight quantisation (no pruning): every weight kept, new values on a ``bits``-bit grid
    with one scale (and zero point if ``sym`` is False) per row and ``group_size`` columns
    (-1: per row); ``act_order`` visits columns by decreasing Hessian diagonal. ``sparsity`` is
    ignored. ``info`` carries scale/zero for the compressed-tensors exporter."""
    q = _spec_from(spec)
    act = spec.options["act_order"]
    out = gptq_quantize(W, stats.target.H, q, spec.options["blocksize"], spec.options["percdamp"],
                        act_order=act, name=spec.name)
    return MethodResult(torch.ones_like(W, dtype=torch.bool), out["weight"], _info(out, q, act))


@register("sparsegpt-gptq", needs=("hessian",), updates_weights=True,
          options=SparseGPTQOptions)
def sparsegpt_gptq(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """SparseGPT's joint pruning and quantisation: per block the SparseGPT mask (w²/d², or N:M),
    then each column is zeroed where pruned, rounded to the grid, and its error propagated."""
    q = _spec_from(spec)
    pat = spec.pattern
    out = gptq_quantize(W, stats.target.H, q, spec.options["blocksize"], spec.options["percdamp"],
                        sparsity=0.0 if pat.structured else spec.sparsity, prunen=pat.n, prunem=pat.m,
                        reference_threshold=spec.options["reference_threshold"], name=spec.name)
    kept = ~out["pruned"]
    return MethodResult(kept, out["weight"] * kept, _info(out, q, False))
