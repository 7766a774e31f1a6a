"""Similarity of pruning masks (Kurz et al. 2025, Sec. 5.2 and App. D.3).

Masks are bool, ``True`` = kept, so the pruned set of a matrix is ``~mask``. Per language, the
pruned sets of its runs (seeds) are intersected first (the stable part, ``M_I``); the IoU of two
languages is ``|M_I¹ ∩ M_I²| / |M_I¹ ∪ M_I²|``. Seed agreement within a language is
``|∩ M_i| / |∪ M_i|``.
"""
from __future__ import annotations

import re
from collections import defaultdict

import torch

_LAYER = re.compile(r"\.(\d+)\.")


def pruned(mask: torch.Tensor) -> torch.Tensor:
    """Pruned set of a kept-mask (``True`` = kept)."""
    return ~mask.bool()


def intersect(sets: list[torch.Tensor]) -> torch.Tensor:
    """Element-wise intersection of bool sets of one shape."""
    out = sets[0].clone()
    for s in sets[1:]:
        out &= s
    return out


def union(sets: list[torch.Tensor]) -> torch.Tensor:
    out = sets[0].clone()
    for s in sets[1:]:
        out |= s
    return out


def iou_counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(|a ∩ b|, |a ∪ b|) of two bool sets."""
    return int((a & b).sum()), int((a | b).sum())


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 when both are empty)."""
    i, u = iou_counts(a, b)
    return i / u if u else 1.0


def stable_pruned(masks_per_seed: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per matrix: the weights pruned by every run of the group (``M_I``)."""
    names = masks_per_seed[0].keys()
    return {n: intersect([pruned(m[n]) for m in masks_per_seed]) for n in names}


def seed_agreement(masks_per_seed: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Per matrix: |∩ M_i| / |∪ M_i| over the runs of one group."""
    out = {}
    for n in masks_per_seed[0]:
        sets = [pruned(m[n]) for m in masks_per_seed]
        i, u = int(intersect(sets).sum()), int(union(sets).sum())
        out[n] = i / u if u else 1.0
    return out


def split_name(name: str) -> tuple[int, str]:
    """``model.layers.3.self_attn.q_proj.weight`` → (3, ``self_attn.q_proj``)."""
    m = _LAYER.search(name)
    if not m:
        return -1, name.removesuffix(".weight")
    return int(m.group(1)), name[m.end():].removesuffix(".weight")


def pairwise_iou(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """IoU of two pruned-set dicts per matrix, per module type (mean over layers of the per-matrix
    IoU, as Kurz et al. Table 17), per layer (pooled counts over the layer's matrices) and
    overall (pooled counts)."""
    per_matrix, counts_layer = {}, defaultdict(lambda: [0, 0])
    per_type = defaultdict(list)
    tot = [0, 0]
    for n in a:
        i, u = iou_counts(a[n], b[n])
        per_matrix[n] = i / u if u else 1.0
        layer, mtype = split_name(n)
        per_type[mtype].append(per_matrix[n])
        counts_layer[layer][0] += i
        counts_layer[layer][1] += u
        tot[0] += i
        tot[1] += u
    return {
        "per_matrix": per_matrix,
        "per_type": {t: sum(v) / len(v) for t, v in per_type.items()},
        "per_layer": {k: (i / u if u else 1.0) for k, (i, u) in sorted(counts_layer.items())},
        "overall": tot[0] / tot[1] if tot[1] else 1.0,
    }
