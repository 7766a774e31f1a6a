"""Uniform integer weight quantisation grids (pure tensor math), as IST-DASLab/gptq's ``Quantizer``.

A group of weights is stored as integers ``q ∈ [0, 2^bits − 1]`` with a scale and an integer zero
point; its value is ``scale · (q − zero)``. Min–max range per row (and per group of ``group_size``
input columns): the range always contains 0 (so pruned zeros stay exact zeros); symmetric grids
use ``xmax = max(|xmin|, xmax)``, ``xmin = −xmax`` (when xmin < 0) and ``zero = 2^(bits−1)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError

SUPPORTED_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class QuantSpec:
    """``bits``; ``group_size`` input columns per scale (``None`` = one scale per output row);
    ``sym``: symmetric grid (zero point fixed at the middle)."""

    bits: int = 4
    group_size: int | None = 128
    sym: bool = True

    @property
    def maxq(self) -> int:
        return 2 ** self.bits - 1

    def groups(self, columns: int) -> int:
        return 1 if self.group_size is None else -(-columns // self.group_size)


def quant_spec(bits: int = 4, group_size: int | None = 128, sym: bool = True, columns: int | None = None) -> QuantSpec:
    """A validated :class:`QuantSpec`; ``group_size`` ≤ 0 or ``None`` means per output row. With
    ``columns``, the group size must divide it (what compressed-tensors can store); the GPTQ math
    itself allows a shorter last group, as the reference does."""
    if isinstance(bits, bool) or int(bits) != bits or int(bits) not in SUPPORTED_BITS:
        raise UserError(f"{bits} bits are not supported: choose one of {', '.join(map(str, SUPPORTED_BITS))}")
    gs = None if group_size in (None, -1, 0) else int(group_size)
    if gs is not None and gs < 0:
        raise UserError(f"group size {group_size} is invalid: give a positive number of columns or -1 (per row)")
    if gs is not None and columns is not None and columns % gs:
        raise UserError(f"group size {gs} does not divide in_features {columns}: choose a divisor "
                        f"(e.g. 32, 64, 128) or -1 (one scale per row)")
    return QuantSpec(int(bits), gs, bool(sym))


def find_params(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, zero)`` [rows, 1] of the min–max grid of ``x`` [rows, cols] (the reference's
    ``find_params(weight=True)`` with ``perchannel``)."""
    x = x.float()
    tmp = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    if spec.sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)  # masked, not boolean-indexed: no host sync on a GPU
    flat = (xmin == 0) & (xmax == 0)
    xmin = xmin.masked_fill(flat, -1)
    xmax = xmax.masked_fill(flat, +1)
    scale = (xmax - xmin) / spec.maxq
    if spec.sym:
        zero = torch.full_like(scale, (spec.maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale.reshape(-1, 1), zero.reshape(-1, 1)


def quantize_int(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zero, 0, maxq)`` (float tensor holding integers)."""
    return torch.clamp(torch.round(x / scale) + zero, 0, maxq)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Round ``x`` to the grid and return the dequantised values ``scale · (q − zero)``."""
    return scale * (quantize_int(x, scale, zero, maxq) - zero)


def expand_groups(t: torch.Tensor, columns: int, group_size: int | None) -> torch.Tensor:
    """[rows, groups] per-group parameters → [rows, columns] (one value per weight)."""
    if group_size is None:
        return t.reshape(-1, 1).expand(-1, columns)
    return t.repeat_interleave(group_size, dim=1)[:, :columns]


def rtn(W: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest baseline: ``(dequantised W, scale [rows, groups], zero [rows, groups])``."""
    rows, cols = W.shape
    gs = spec.group_size or cols
    scales, zeros, out = [], [], torch.empty_like(W, dtype=torch.float32)
    for c in range(0, cols, gs):
        s, z = find_params(W[:, c:c + gs], spec)
        out[:, c:c + gs] = quantize(W[:, c:c + gs].float(), s, z, spec.maxq)
        scales.append(s)
        zeros.append(z)
    return out, torch.cat(scales, 1), torch.cat(zeros, 1)


def codes(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes [rows, cols] (uint8) of weights that lie on the grid given per-group params."""
    cols = W.shape[1]
    s = expand_groups(scale, cols, spec.group_size)
    z = expand_groups(zero, cols, spec.group_size)
    return quantize_int(W.float(), s, z, spec.maxq).to(torch.uint8)


def on_grid(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> bool:
    """Whether every weight equals ``scale · (q − zero)`` for an integer ``q ∈ [0, maxq]`` exactly
    (as computed in fp32)."""
    cols = W.shape[1]
    s = expand_groups(scale, cols, spec.group_size)
    z = expand_groups(zero, cols, spec.group_size)
    return bool(torch.equal(quantize(W.float(), s, z, spec.maxq), W.float()))
