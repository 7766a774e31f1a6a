"""Language-agnostic vs language-specific representations: LSAR (Xie et al. 2022), as used by
Kurz et al. 2025 (Sec. 5.1, App. D.2).

M [d, L] holds one mean embedding per language. LSAR finds μ (shared, language-agnostic) and an
orthonormal M_s [d, r] (language-specific subspace, r ≤ L − 1) with M ≈ μ1ᵀ + M_s Γᵀ and
μ ⟂ span(M_s), in two SVD steps. An embedding e splits into its language-specific part
s = M_s M_sᵀ e and its language-agnostic part a = e − s.
"""
from __future__ import annotations

import torch

from ..errors import UserError


def lsar_subspace(M: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mu [d], M_s [d, r], Gamma [L, r])`` from language means ``M`` [d, L] (float64 inside).

    Step 1: centre the columns on their mean μ', top-r SVD → M' = μ'1ᵀ + U_r S_r V_rᵀ.
    Step 2: μ = v / ‖v‖² with v = pinv(M'ᵀ) 1 (so that M'ᵀμ = ‖μ‖² 1, i.e. every column minus μ
    is orthogonal to μ), then top-r SVD of M' − μ1ᵀ gives M_s and Γ (Γ = V_r S_r)."""
    if M.dim() != 2:
        raise UserError(f"LSAR needs a [d, L] matrix of language means, got shape {tuple(M.shape)}")
    d, L = M.shape
    if L < 2:
        raise UserError("LSAR needs at least two languages: give two or more --lang")
    r = L - 1 if rank is None else int(rank)
    if not 1 <= r <= L - 1:
        raise UserError(f"LSAR rank {r} is outside [1, {L - 1}] for {L} languages")
    Md = M.double()
    ones = torch.ones(L, dtype=torch.float64)
    mu1 = Md.mean(dim=1)
    U, S, Vh = torch.linalg.svd(Md - mu1[:, None], full_matrices=False)
    Mp = mu1[:, None] + U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
    v = torch.linalg.pinv(Mp.t()) @ ones
    mu = v / (v @ v)
    U2, S2, Vh2 = torch.linalg.svd(Mp - mu[:, None], full_matrices=False)
    Ms = U2[:, :r]
    gamma = Vh2[:r].t() * S2[:r]
    return mu.to(M.dtype), Ms.to(M.dtype), gamma.to(M.dtype)


def lsar_split(E: torch.Tensor, Ms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(specific, agnostic)`` parts of embeddings ``E`` [n, d]: s = E M_s M_sᵀ, a = E − s."""
    s = (E.double() @ Ms.double()) @ Ms.double().t()
    return s.to(E.dtype), (E.double() - s).to(E.dtype)


def component_change(dense: torch.Tensor, pruned: torch.Tensor, Ms_dense: torch.Tensor,
                     Ms_pruned: torch.Tensor) -> dict[str, float]:
    """How pruning moves each component of sentence embeddings [n, d] (one language, one layer):
    the mean over sentences of ‖x_dense − x_pruned‖₂ for x = specific / agnostic part, each model
    using its own subspace (Kurz et al.), plus the same relative to the mean dense norm."""
    sd, ad = lsar_split(dense, Ms_dense)
    sp, ap = lsar_split(pruned, Ms_pruned)
    ds = float((sd - sp).double().norm(dim=1).mean())
    da = float((ad - ap).double().norm(dim=1).mean())
    ns = float(sd.double().norm(dim=1).mean())
    na = float(ad.double().norm(dim=1).mean())
    return {"delta_specific": ds, "delta_agnostic": da,
            "rel_delta_specific": ds / ns if ns else float("nan"),
            "rel_delta_agnostic": da / na if na else float("nan"),
            "norm_specific": ns, "norm_agnostic": na}


# ------------------------------------------------------------------ plumbing
def run_lsar(runs, opts, out) -> dict:
    """Per layer: LSAR subspace of each model (dense, each run) from its per-language mean sentence
    embeddings; how far each run moves the language-specific and language-agnostic parts of the
    sentence embeddings, per evaluation language."""
    from .common import resolve_eval_langs
    from .hidden import collect
    langs = resolve_eval_langs(opts.langs, runs, 2, "lsar")
    res = collect(runs, langs, opts, keep_states=False)
    n_layers = res.sent_means[(None, langs[0])].shape[1]

    def subspaces(key):
        out_ = []
        for li in range(n_layers):
            M = torch.stack([res.sent_means[(key, lang)][:, li].double().mean(0) for lang in langs], 1)
            out_.append(lsar_subspace(M, opts.rank)[1])
        return out_

    dense_ms = subspaces(None)
    rows = []
    for ri, r in enumerate(runs):
        run_ms = subspaces(ri)
        for lang in langs:
            for li in range(n_layers):
                ch = component_change(res.sent_means[(None, lang)][:, li].double(),
                                      res.sent_means[(ri, lang)][:, li].double(), dense_ms[li], run_ms[li])
                rows.append({"run": r.key, "lang": lang, "layer": li, **ch})
    out.table("lsar", rows)
    _plot_lsar(out, runs, langs, rows, n_layers)
    summ = {}
    for r in runs:
        sel = [x for x in rows if x["run"] == r.key]
        summ[r.key] = {k: sum(x[k] for x in sel) / len(sel) for k in ("delta_specific", "delta_agnostic",
                                                                         "rel_delta_specific", "rel_delta_agnostic")}
    return {"langs": langs, "rank": opts.rank or len(langs) - 1, "mean_over_layers_and_langs": summ}


def _plot_lsar(out, runs, langs, rows, n_layers) -> None:
    from .common import heatmap, integer_xaxis, lang_name, plt as _plt
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for r in runs:
        for col, name in ((0, "agnostic"), (1, "specific")):
            for row, key, what in ((0, f"delta_{name}", "mean ‖dense − pruned‖₂ per sentence"),
                                   (1, f"rel_delta_{name}", "relative to the dense component's norm")):
                a = axes[row, col]
                ys = [sum(x[key] for x in rows if x["run"] == r.key and x["layer"] == li) / len(langs)
                      for li in range(n_layers)]
                a.plot(range(n_layers), ys, marker="o", ms=2.5, label=r.label)
                a.set_ylabel(what)
            axes[0, col].set_title(f"Δ language-{name} component")
    for a in axes.flat:
        a.grid(alpha=0.3)
        integer_xaxis(a)
    for a in axes[1]:
        a.set_xlabel("decoder layer")
    axes[0, 1].legend(title="calibration", fontsize=7, title_fontsize=8)
    fig.suptitle(f"LSAR: change of sentence-embedding components by pruning (mean over "
                 f"{', '.join(lang_name(x) for x in langs)})")
    fig.tight_layout()
    out.figure(fig, "lsar_layers")
    fig, axes = plt.subplots(1, 2, figsize=(2.4 * len(langs) + 6, 0.55 * len(runs) + 2.6))
    for a, key, name in ((axes[0], "rel_delta_agnostic", "agnostic"), (axes[1], "rel_delta_specific", "specific")):
        vals = [[sum(x[key] for x in rows if x["run"] == r.key and x["lang"] == lang) / n_layers
                 for lang in langs] for r in runs]
        heatmap(a, vals, [r.label for r in runs], [lang_name(x) for x in langs],
                f"relative Δ language-{name} (mean over layers)", fmt="{:.3f}", cmap="magma")
        a.set_xlabel("evaluation language")
        a.set_title(f"Δ language-{name} / dense norm")
    axes[0].set_ylabel("calibration")
    fig.tight_layout()
    out.figure(fig, "lsar_summary")
