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


# ------------------------------------------------------------------ plumbing
def run_mask_iou(runs, opts, out) -> dict:
    """IoU of pruned sets between calibration groups (runs that differ only by seed form a group;
    their pruned sets are intersected first): per matrix, module type, layer and overall."""
    from ..errors import UserError
    from ..masks import load_masks
    from .common import same_base
    same_base(runs)
    groups: dict[str, list] = {}
    labels: dict[str, str] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(load_masks(r.path))
        labels[r.group] = r.group_label
    if len(groups) < 2:
        raise UserError("mask IoU compares calibrations: give runs of at least two different calibrations "
                        f"(all {len(runs)} runs use {next(iter(groups))})")
    ref = next(iter(groups.values()))[0]
    for g, ms in groups.items():
        for m in ms:
            if set(m) != set(ref) or any(m[k].shape != ref[k].shape for k in ref):
                raise UserError(f"the runs pruned different matrices (architectures or keep-dense layers "
                                f"differ, group {g}): compare runs of one model and layer set")
    stable = {g: stable_pruned(ms) for g, ms in groups.items()}
    names = list(groups)
    seed_rows = []
    for g, ms in groups.items():
        if len(ms) > 1:
            for n, v in seed_agreement(ms).items():
                layer, mtype = split_name(n)
                seed_rows.append({"group": g, "runs": len(ms), "matrix": n, "layer": layer, "type": mtype,
                                  "iou": v})
    pair_rows, type_rows, layer_rows, overall = [], [], [], {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            res = pairwise_iou(stable[a], stable[b])
            overall[(a, b)] = res["overall"]
            for n, v in res["per_matrix"].items():
                layer, mtype = split_name(n)
                pair_rows.append({"a": a, "b": b, "matrix": n, "layer": layer, "type": mtype, "iou": v})
            for t, v in res["per_type"].items():
                type_rows.append({"a": a, "b": b, "type": t, "iou": v})
            for layer, v in res["per_layer"].items():
                layer_rows.append({"a": a, "b": b, "layer": layer, "iou": v})
    out.table("mask_iou_per_matrix", pair_rows)
    out.table("mask_iou_per_type", type_rows)
    out.table("mask_iou_per_layer", layer_rows)
    if seed_rows:
        out.table("mask_iou_seeds", seed_rows)
    mat = [[1.0 if a == b else overall.get((a, b), overall.get((b, a))) for b in names] for a in names]
    out.table("mask_iou_overall", [{"group": a, **{b: mat[i][j] for j, b in enumerate(names)}}
                                   for i, a in enumerate(names)])
    _plot_iou(out, names, labels, mat, type_rows, layer_rows, {g: len(ms) for g, ms in groups.items()})
    return {"groups": {g: len(ms) for g, ms in groups.items()},
            "overall": {f"{a} vs {b}": v for (a, b), v in overall.items()},
            "per_type_mean": _mean_by(type_rows, "type")}


def _mean_by(rows, key):
    acc = defaultdict(list)
    for r in rows:
        acc[r[key]].append(r["iou"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _plot_iou(out, names, labels, mat, type_rows, layer_rows, sizes) -> None:
    import numpy as np
    from .common import heatmap, plt as _plt
    plt = _plt()
    lab = [f"{labels[g]} (×{sizes[g]})" if sizes[g] > 1 else labels[g] for g in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 1.0 * len(names) + 2))
    off = np.array([[v for j, v in enumerate(row) if j != i] for i, row in enumerate(mat)], dtype=float)
    heatmap(ax, mat, lab, lab, "IoU of pruned weights (all matrices)", fmt="{:.3f}", vmin=float(off.min()),
            vmax=1.0)
    ax.set_xlabel("calibration")
    ax.set_ylabel("calibration")
    ax.set_title("Pruning-mask similarity between calibrations\n(seeds intersected first)")
    out.figure(fig, "mask_iou_overall")
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in layer_rows))
    pl = [f"{labels[a]} vs {labels[b]}" for a, b in pairs]
    layers = sorted({r["layer"] for r in layer_rows})
    types = list(dict.fromkeys(r["type"] for r in type_rows))
    lv = {(r["a"], r["b"], r["layer"]): r["iou"] for r in layer_rows}
    tv = {(r["a"], r["b"], r["type"]): r["iou"] for r in type_rows}
    fig, ax = plt.subplots(figsize=(0.45 * len(layers) + 5, 0.45 * len(pairs) + 2))
    heatmap(ax, [[lv[(a, b, layer)] for layer in layers] for a, b in pairs], pl, [str(x) for x in layers],
            "IoU of pruned weights", annotate=False)
    ax.set_xlabel("decoder layer")
    ax.set_title("Pruning-mask IoU per layer (pooled over the layer's matrices)")
    out.figure(fig, "mask_iou_layers")
    fig, ax = plt.subplots(figsize=(0.9 * len(types) + 5, 0.45 * len(pairs) + 2.5))
    heatmap(ax, [[tv[(a, b, t)] for t in types] for a, b in pairs], pl, types,
            "IoU (mean over layers)", fmt="{:.3f}")
    ax.set_xlabel("module type")
    ax.set_title("Pruning-mask IoU per module type")
    out.figure(fig, "mask_iou_types")
