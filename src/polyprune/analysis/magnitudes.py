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


# ------------------------------------------------------------------ plumbing
def run_magnitudes(runs, opts, out) -> dict:
    """Feature magnitudes of every run's calibration set (one run per set, kept ``scaler_row``):
    overlap heatmaps per layer, quadrant averages across layers, unique top-k dimensions of each
    translation set against its two monolingual sets, top-k dimensions."""
    from .common import module_order, read_stats, same_base
    if len(runs) < 2:
        raise UserError("magnitudes compares calibration sets: give at least two runs (one per set)")
    same_base(runs)
    path, order = module_order(runs[0].cfg.model)
    module = opts.module or order[0]
    if module not in order:
        raise UserError(f"--module {module!r} is not a prunable module of a decoder layer: choose one of "
                        f"{', '.join(order)}")
    per_run = []
    for r in runs:
        st = read_stats(r, "scaler_row", "--keep-stats")
        vecs = {}
        for param, sets in st.items():
            if not param.startswith(path + ".") or not param.endswith(f".{module}.weight"):
                continue
            layer = int(param[len(path) + 1:].split(".", 1)[0])
            t = sets.get("target") if "target" in sets else next(iter(sets.values()))
            vecs[layer] = torch.sqrt(t.float())  # ‖X_j‖₂ = sqrt(scaler_row)
        if not vecs:
            raise UserError(f"{r.path}: no kept statistics for module {module!r}: re-run with --keep-stats")
        per_run.append(vecs)
    layers = sorted(set.intersection(*(set(v) for v in per_run)))
    if not layers:
        raise UserError("the runs share no layer with kept statistics (keep-dense layers differ?)")
    labels = [r.label for r in runs]
    keys = [r.key for r in runs]
    trans = [r.is_translation for r in runs]
    mats, quad_rows, overlap_rows, top_rows, unique_rows = {}, [], [], [], []
    for layer in layers:
        norms = torch.stack([v[layer] for v in per_run])
        m = overlap_matrix(norms, opts.beta)
        mats[layer] = m
        for i in range(len(runs)):
            for j in range(len(runs)):
                overlap_rows.append({"layer": layer, "top_of": keys[i], "bottom_of": keys[j],
                                     "overlap": float(m[i, j])})
        q = quadrant_means(m, trans)
        quad_rows.append({"layer": layer, **q})
        for i, r in enumerate(runs):
            idx = top_dims(norms[i], opts.topk)
            for rank, j in enumerate(idx.tolist()):
                top_rows.append({"layer": layer, "set": keys[i], "rank": rank + 1, "dim": j,
                                 "magnitude": float(norms[i, j])})
        for i, r in enumerate(runs):
            if not r.is_translation:
                continue
            monos = _monolingual_partners(r, runs)
            if not monos:
                continue
            for k in opts.unique_k:
                kk = min(k, norms.shape[1])
                sh = unique_share(norms[i], [norms[j] for j in monos], kk)
                row = {"layer": layer, "translation": keys[i], "k": kk}
                for n, j in enumerate(monos):
                    row[f"absent_from_{keys[j]}"] = sh[str(n)]
                row["absent_from_all"] = sh["all"]
                unique_rows.append(row)
    out.table("magnitudes_overlap", overlap_rows)
    out.table("magnitudes_quadrants", quad_rows)
    out.table("magnitudes_topk", top_rows)
    if unique_rows:
        out.table("magnitudes_unique", unique_rows)
    elif any(trans):
        log.warning("no monolingual run matches the languages of the translation sets: unique dims skipped")
    _plot_magnitudes(out, mats, labels, trans, quad_rows, per_run, runs, layers, module, opts)
    mid = layers[len(layers) // 2]
    return {"module": module, "layers": layers, "beta": opts.beta, "sets": keys,
            "quadrants_mean_over_layers": {q: float(torch.tensor([r[q] for r in quad_rows]).nanmean())
                                           for q in QUADRANTS},
            "middle_layer": mid, "unique_middle_layer": [r for r in unique_rows if r["layer"] == mid]}


def _monolingual_partners(r, runs) -> list[int]:
    """Indices of the monolingual runs in the translation run's source and target languages."""
    want = r.calib_langs + ([r.target_lang] if r.target_lang else [])
    out = []
    for lang in want:
        for j, o in enumerate(runs):
            if not o.is_translation and o.calib_langs == [lang]:
                out.append(j)
                break
    return out


def _plot_magnitudes(out, mats, labels, trans, quad_rows, per_run, runs, layers, module, opts) -> None:
    import math as _m
    from .common import heatmap, integer_xaxis, plt as _plt
    plt = _plt()
    pct = int(round(opts.beta * 100))
    # one big heatmap of the middle layer (Kim et al. Fig. 1)
    mid = layers[len(layers) // 2]
    vmax = max(0.05, max(float(m.max()) for m in mats.values()))  # one colour scale for every layer
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 3, 0.9 * len(labels) + 2))
    heatmap(ax, mats[mid].numpy(), labels, labels, f"overlap ratio (top-{pct}% ∩ bottom-{pct}%)", vmin=0,
            vmax=vmax)
    ax.set_xlabel(f"bottom-{pct}% features of set")
    ax.set_ylabel(f"top-{pct}% features of set")
    ax.set_title(f"Overlap of top- and bottom-{pct}% input features, layer {mid} ({module})")
    out.figure(fig, f"magnitudes_overlap_layer{mid:02d}")
    # all layers in a grid
    n = len(layers)
    cols = min(6, n)
    rows = _m.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols + 2.5, 2.2 * rows + 1.6), squeeze=False,
                             layout="constrained")
    short = [lab if len(lab) <= 16 else lab[:15] + "…" for lab in labels]
    im = None
    for k, (a, layer) in enumerate(zip(axes.flat, layers)):
        im = a.imshow(mats[layer].numpy(), vmin=0, vmax=vmax, cmap="viridis")
        a.set_title(f"layer {layer}", fontsize=9)
        r_, c_ = divmod(k, cols)
        last_row = k + cols >= n
        a.set_xticks(range(len(labels)), labels=short if last_row else [], rotation=90, fontsize=7)
        a.set_yticks(range(len(labels)), labels=short if c_ == 0 else [], fontsize=7)
    for a in list(axes.flat)[n:]:
        a.axis("off")
    cb = fig.colorbar(im, ax=axes, shrink=0.8)
    cb.set_label(f"overlap ratio (top-{pct}% of row set ∩ bottom-{pct}% of column set)")
    fig.suptitle(f"Overlap of top-/bottom-{pct}% input features per layer ({module})")
    out.figure(fig, "magnitudes_overlap_layers")
    # quadrant averages across layers (Kim et al. Fig. 4)
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["layer"] for r in quad_rows]
    names = {"mono→mono": "monolingual × monolingual", "mono→trans": "monolingual (top) × translation (bottom)",
             "trans→mono": "translation (top) × monolingual (bottom)", "trans→trans": "translation × translation"}
    for q in QUADRANTS:
        ys = [r[q] for r in quad_rows]
        if all(_m.isnan(y) for y in ys):
            continue
        ax.plot(xs, ys, marker="o", ms=3, label=names[q])
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("mean overlap ratio (off-diagonal)")
    ax.set_ylim(bottom=0.0)  # a ratio: never below 0, so no negative range even when every value is 0
    ax.set_title(f"Quadrant averages of the top-/bottom-{pct}% overlap ({module})")
    ax.grid(alpha=0.3)
    integer_xaxis(ax)
    ax.legend(fontsize=8)
    out.figure(fig, "magnitudes_quadrants")
    # top-k dimensions of each set at the middle layer (Kim et al. Fig. 2)
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.8 * len(runs) + 0.8), squeeze=False)
    for a, r, vecs in zip(axes[:, 0], runs, per_run):
        v = vecs[mid]
        idx = top_dims(v, opts.topk)
        a.bar(range(len(idx)), v[idx].numpy(), color="tab:red" if r.is_translation else "tab:blue")
        a.set_xticks(range(len(idx)), labels=[str(i) for i in idx.tolist()], fontsize=6, rotation=90)
        a.set_ylabel("‖X_j‖₂", fontsize=8)
        a.set_title(r.label, fontsize=9)
    axes[-1, 0].set_xlabel("feature dimension (ranked by magnitude)")
    fig.suptitle(f"Top-{opts.topk} input-feature magnitudes, layer {mid} ({module})")
    fig.tight_layout()
    out.figure(fig, f"magnitudes_topk_layer{mid:02d}")
