"""Feature magnitudes across calibration sets (Kim et al. 2024, Sec. 3 and App. C).

The magnitude of input feature j of a Linear is ``‖X_j‖₂``, the statistic Wanda scores with
(``sqrt(scaler_row)``), read back from runs made with ``--keep-stats``. Pure functions first
(vectors in, numbers out), then the plumbing that reads runs and writes tables and figures.
"""
from __future__ import annotations

import logging
from itertools import product

import torch

from ..errors import UserError

log = logging.getLogger(__name__)

QUADRANTS = ("mono→mono", "mono→trans", "trans→mono", "trans→trans")


def n_beta(d: int, beta: float) -> int:
    """``d_β = d · β`` dimensions (β a fraction in (0, 0.5]), at least one."""
    if not 0.0 < beta <= 0.5:
        raise UserError(f"beta {beta} is outside (0, 0.5]: give a fraction such as 0.3")
    return max(1, int(d * beta))


def top_dims(norms: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest magnitudes, largest first (ties: lower index first)."""
    order = torch.sort(norms.float(), descending=True, stable=True)[1]
    return order[:k]


def bottom_dims(norms: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest magnitudes, smallest first (ties: lower index first)."""
    order = torch.sort(norms.float(), descending=False, stable=True)[1]
    return order[:k]


def overlap_ratio(top_of: torch.Tensor, bottom_of: torch.Tensor, beta: float = 0.3) -> float:
    """``|top-β(top_of) ∩ bottom-β(bottom_of)| / d_β`` (Kim et al., Eq. 2).

    High: the features most active for ``top_of`` are among the least active for ``bottom_of``."""
    if top_of.shape != bottom_of.shape or top_of.dim() != 1:
        raise UserError(f"overlap ratio needs two vectors of one length, got {tuple(top_of.shape)} "
                        f"and {tuple(bottom_of.shape)}")
    k = n_beta(top_of.numel(), beta)
    top = set(top_dims(top_of, k).tolist())
    bottom = set(bottom_dims(bottom_of, k).tolist())
    return len(top & bottom) / k


def overlap_matrix(norms: torch.Tensor, beta: float = 0.3) -> torch.Tensor:
    """[S, S] matrix: entry (i, j) = overlap of the top-β of set i with the bottom-β of set j.

    ``norms``: [S, d], one magnitude vector per calibration set."""
    s, d = norms.shape
    k = n_beta(d, beta)
    top = torch.zeros(s, d, dtype=torch.bool)
    bot = torch.zeros(s, d, dtype=torch.bool)
    for i in range(s):
        top[i, top_dims(norms[i], k)] = True
        bot[i, bottom_dims(norms[i], k)] = True
    return (top.float() @ bot.float().t()) / k


def quadrant_means(matrix: torch.Tensor, is_translation: list[bool]) -> dict[str, float]:
    """Mean of the off-diagonal entries of each quadrant (rows = top-of set, cols = bottom-of set):
    ``mono→mono``, ``mono→trans`` (top of a monolingual set vs bottom of a translation set), …
    A quadrant without off-diagonal entries is NaN."""
    flags = torch.tensor(is_translation, dtype=torch.bool)
    out = {}
    for (rt, ct), name in zip(product((False, True), repeat=2), QUADRANTS):
        sel = (flags == rt).unsqueeze(1) & (flags == ct).unsqueeze(0)
        sel.fill_diagonal_(False)
        out[name] = float(matrix[sel].mean()) if sel.any() else float("nan")
    return out


def unique_share(translation: torch.Tensor, monolingual: list[torch.Tensor], k: int) -> dict[str, float]:
    """Share of the translation set's top-k dimensions absent from the top-k of each monolingual
    set (``"0"``, ``"1"``, … in the given order) and from all of them (``"all"``), as in Kim et al.
    Table 7."""
    top = set(top_dims(translation, k).tolist())
    out = {}
    union: set[int] = set()
    for i, m in enumerate(monolingual):
        mt = set(top_dims(m, k).tolist())
        union |= mt
        out[str(i)] = len(top - mt) / k
    out["all"] = len(top - union) / k
    return out
