"""SparseGPT (Frantar & Alistarh 2023): OBS-based pruning with weight reconstruction."""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError
from ..options import Bool, Int, Number, Strict
from . import MethodResult, Spec, register


def inverse_hessian_factor(W: torch.Tensor, H: torch.Tensor, percdamp: float = 0.01, name: str = "",
                           max_tries: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead inputs (diag 0) get H_ii = 1 and their weight column zeroed; damping λ·mean(diag H);
    returns (W, upper Cholesky factor of H⁻¹). On Cholesky failure the damping is raised ×10
    stepwise; if it still fails, a clear error names the layer."""
    H = H.clone()
    W = W.clone()
    dead = torch.diag(H) == 0
    H.diagonal().masked_fill_(dead, 1)  # masked fills, not boolean indexing: no host sync on a GPU
    W.masked_fill_(dead.reshape(1, -1), 0)
    diag = torch.arange(H.shape[0], device=H.device)
    mean_diag = torch.mean(torch.diag(H))
    damp = percdamp
    for _ in range(max_tries):
        Hd = H.clone()
        Hd[diag, diag] += damp * mean_diag
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0:
                return W, U
        damp *= 10
    raise UserError(f"{name or 'layer'}: the input Hessian is not positive definite even with damping "
                    f"{damp / 10:g}·mean(diag): give more (or more varied) calibration tokens or raise percdamp")


def block_mask(W1: torch.Tensor, Hinv1: torch.Tensor, sparsity: float, reference_threshold: bool = True
               ) -> torch.Tensor:
    """SparseGPT's unstructured mask of one column block: prune the smallest w²/d² over the block
    (``<=`` the reference's threshold, or exactly int(numel·s) with ``reference_threshold=False``)."""
    tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
    if reference_threshold:
        return tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
    mask = torch.zeros_like(tmp, dtype=torch.bool)
    mask.view(-1)[torch.sort(tmp.flatten(), stable=True)[1][:int(tmp.numel() * sparsity)]] = True
    return mask


def nm_group_mask_(mask1: torch.Tensor, W1: torch.Tensor, Hinv1: torch.Tensor, i: int, n: int, m: int) -> None:
    """In place: mark the n smallest w²/d² of each row in columns i..i+m of the block as pruned."""
    tmp = W1[:, i:i + m] ** 2 / (torch.diag(Hinv1)[i:i + m].reshape((1, -1))) ** 2
    mask1.scatter_(1, i + torch.topk(tmp, n, dim=1, largest=False)[1], True)


def obs_sweep(W: torch.Tensor, Hinv: torch.Tensor, sparsity: float = 0.0, prunen: int = 0, prunem: int = 0,
              blocksize: int = 128, reference_threshold: bool = True,
              round_column: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The column sweep shared by SparseGPT and GPTQ (IST-DASLab ``fasterprune`` / ``fasterquant``):
    per block of columns the pruning mask (w²/d² over the block, or N:M groups as the sweep reaches
    them), then each column is zeroed where pruned, optionally rounded (``round_column(col, q, W)``
    with ``W`` as updated up to the current block), and its error spread over the remaining columns
    with the rows of the inverse-Hessian factor ``Hinv``. Returns (pruned mask, new weight)."""
    W = W.clone()
    columns = W.shape[1]
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunem == 0 and sparsity > 0:
            mask1 = block_mask(W1, Hinv1, sparsity, reference_threshold)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w = W1[:, i]
            if prunem and i % prunem == 0:
                nm_group_mask_(mask1, W1, Hinv1, i, prunen, prunem)
            q = w.clone().masked_fill_(mask1[:, i], 0)  # a boolean index would sync a GPU every column
            if round_column is not None:
                q = round_column(i1 + i, q, W)
            Q1[:, i] = q
            err1 = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return pruned, W


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, prunen: int = 0, prunem: int = 0,
                    blocksize: int = 128, percdamp: float = 0.01, reference_threshold: bool = True,
                    name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (pruned mask, reconstructed weight), both [out, in], as IST-DASLab/sparsegpt's
    ``fasterprune``. Unstructured masks are chosen per block of columns over all rows by w²/d²;
    ``reference_threshold`` keeps the reference's ``<=`` rule, else exactly int(numel·s) per block."""
    W, Hinv = inverse_hessian_factor(W.float(), H, percdamp, name)
    return obs_sweep(W, Hinv, 0.0 if prunem else sparsity, prunen, prunem, blocksize, reference_threshold)


class SparseGPTOptions(Strict):
    blocksize: Int = 128
    percdamp: Number = 0.01
    reference_threshold: Bool = True


@register("sparsegpt", needs=("hessian",), updates_weights=True, options=SparseGPTOptions)
def sparsegpt(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """OBS pruning + reconstruction of the remaining weights from H = (2/n) Σ XXᵀ."""
    pat = spec.pattern
    pruned, Wn = sparsegpt_prune(W, stats.target.H, spec.sparsity, pat.n, pat.m,
                                 spec.options["blocksize"], spec.options["percdamp"],
                                 spec.options["reference_threshold"], spec.name)
    return MethodResult(~pruned, Wn * (~pruned))
