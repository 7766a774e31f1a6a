"""Language-specific FFN neurons by Language Activation Probability Entropy (Tang et al. 2024),
as used by Kurz et al. 2025 (Sec. 5.3, App. D.4).

p[l, j, k]: probability that FFN neuron j of layer l is active (> 0) on tokens of language k —
by default its value at the input of the FFN output projection (the gated product act(gate)·up
in GLU blocks, the activation output otherwise); ``activation="act"`` counts the activation
function's output instead, as Tang et al.'s code does (act(gate) > 0 in GLU blocks).
Normalised over languages, its entropy is LAPE (low = language-specific). Selection follows the
reference code: a neuron is a candidate only if some language's probability exceeds the 95th
percentile of all probabilities; the lowest-entropy 1 % of all neurons (over all layers) are
language-specific, and each is assigned to every language whose probability exceeds that same
percentile.
"""
from __future__ import annotations

import math

import torch

from ..errors import UserError


def activation_probability(active_counts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """p = counts / tokens; ``active_counts`` [..., K] and ``tokens`` [K] (per language)."""
    return active_counts.double() / tokens.double().clamp_min(1)


def lape_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over the last axis of the L1-normalised activation probabilities.
    A neuron never active in any language gets entropy 0 (as in the reference code)."""
    p = probs.double()
    tot = p.sum(-1, keepdim=True)
    q = torch.where(tot > 0, p / tot.clamp_min(1e-300), torch.zeros_like(p))
    logq = torch.where(q > 0, q.clamp_min(1e-300).log(), torch.zeros_like(q))
    return -(q * logq).sum(-1)


def kth_quantile(values: torch.Tensor, rate: float) -> float:
    """The reference's threshold: ``kthvalue(round(n · rate))`` of the flattened values."""
    flat = values.flatten().double()
    k = min(max(1, round(flat.numel() * rate)), flat.numel())
    return float(flat.kthvalue(k).values)


def select_language_neurons(probs: torch.Tensor, top_rate: float = 0.01, filter_rate: float = 0.95,
                            bar_rate: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """``(entropy [layers, n], specific [layers, n, K] bool)`` from probs [layers, n, K].

    specific[l, j, k]: neuron (l, j) is among the ``top_rate`` lowest-entropy candidates and its
    probability for language k exceeds the ``bar_rate`` quantile of all probabilities."""
    ent = lape_entropy(probs)
    filt = kth_quantile(probs, filter_rate)
    cand = (probs > filt).any(-1)
    score = torch.where(cand, ent, torch.full_like(ent, float("inf")))
    n_sel = round(score.numel() * top_rate)
    chosen = torch.zeros(score.numel(), dtype=torch.bool)
    if n_sel:
        idx = torch.topk(score.flatten(), n_sel, largest=False).indices
        chosen[idx] = True
    chosen = chosen.view_as(ent) & cand
    bar = kth_quantile(probs, bar_rate)
    specific = chosen.unsqueeze(-1) & (probs > bar)
    return ent, specific


def removal_counts(specific: torch.Tensor, neuron_pruned_share: torch.Tensor,
                   removed_at: float = 1.0) -> dict:
    """For each language k: its neuron count, the mean share of pruned weights of its neurons, and
    how many of them lost at least ``removed_at`` of their weights.

    ``neuron_pruned_share`` [layers, n]: share of each neuron's weights that a pruned model removed."""
    out = {}
    for k in range(specific.shape[-1]):
        sel = specific[..., k]
        n = int(sel.sum())
        share = neuron_pruned_share[sel]
        out[k] = {"neurons": n,
                  "mean_pruned_share": float(share.mean()) if n else float("nan"),
                  "removed": int((share >= removed_at).sum())}
    return out


# ------------------------------------------------------------------ plumbing
def neuron_pruned_share(masks: dict, path: str, layers) -> torch.Tensor:
    """[layers, n_ffn]: share of each FFN neuron's weights a run pruned — its row in every matrix
    whose outputs are the FFN's intermediate width (up/gate, fc1) and its column in the FFN
    output projection."""
    from ..masks import is_conv1d
    from ..model import prunable_modules
    from .hidden import ffn_output_module
    shares = []
    for i, layer in enumerate(layers):
        out_name, out_mod = ffn_output_module(layer)
        n = out_mod.weight.shape[0] if is_conv1d(out_mod) else out_mod.in_features
        pruned_w = torch.zeros(n, dtype=torch.float64)
        total = torch.zeros(n, dtype=torch.float64)
        for name, mod in prunable_modules(layer).items():
            key = f"{path}.{i}.{name}.weight"
            if key not in masks:
                continue
            m = masks[key].t() if is_conv1d(mod) else masks[key]  # [out, in]
            if name == out_name:
                pruned_w += (~m).sum(0).double()
                total += m.shape[0]
            elif m.shape[0] == n:
                pruned_w += (~m).sum(1).double()
                total += m.shape[1]
        shares.append(torch.where(total > 0, pruned_w / total.clamp_min(1), torch.zeros_like(total)))
    return torch.stack(shares)


def run_lape(runs, opts, out) -> dict:
    """Language-specific FFN neurons of the dense model (LAPE over FLORES evaluation sentences),
    and per run and language: how many of them the pruned model still has as specific to that
    language, how many it lost, how many new ones appear, and the share of their weights pruned."""
    from ..masks import load_masks
    from .common import resolve_eval_langs, skeleton
    from .hidden import collect
    langs = resolve_eval_langs(opts.langs, runs, 2, "lape")
    res = collect(runs, langs, opts, keep_states=False)

    def probs(key):
        widths = {res.active[(key, lang)].shape for lang in langs}
        if len(widths) != 1:
            raise UserError("FFN widths differ between layers: LAPE needs one width per model")
        tokens = torch.tensor([res.tokens[(key, lang)] for lang in langs], dtype=torch.float64)
        counts = torch.stack([res.active[(key, lang)] for lang in langs], -1)
        return activation_probability(counts, tokens)

    p_dense = probs(None)
    ent, spec = select_language_neurons(p_dense, opts.top_rate, opts.filter_rate, opts.filter_rate)
    path, layers = skeleton(runs[0].cfg.model)
    dense_rows = []
    for k, lang in enumerate(langs):
        per_layer = spec[..., k].sum(1)
        for li, c in enumerate(per_layer.tolist()):
            dense_rows.append({"lang": lang, "layer": li, "neurons": int(c)})
    neuron_rows = [{"layer": int(l_), "neuron": int(j), "lang": langs[k], "entropy": float(ent[l_, j]),
                    "prob": float(p_dense[l_, j, k])} for l_, j, k in spec.nonzero().tolist()]
    rows = []
    for ri, r in enumerate(runs):
        p_run = probs(ri)
        ent_r, spec_r = select_language_neurons(p_run, opts.top_rate, opts.filter_rate, opts.filter_rate)
        share = neuron_pruned_share(load_masks(r.path), path, layers)
        counts = removal_counts(spec, share, 1.0)
        for k, lang in enumerate(langs):
            d, pr = spec[..., k], spec_r[..., k]
            n = int(d.sum())
            rows.append({"run": r.key, "lang": lang, "neurons": n, "still_specific": int((d & pr).sum()),
                         "lost": int((d & ~pr).sum()), "lost_share": int((d & ~pr).sum()) / n if n else math.nan,
                         "new": int((~d & pr).sum()),
                         "mean_pruned_weight_share": counts[k]["mean_pruned_share"],
                         "mean_pruned_weight_share_all_neurons": float(share.mean()),
                         "fully_removed": counts[k]["removed"],
                         "mean_prob_dense": float(p_dense[..., k][d].mean()) if n else math.nan,
                         "mean_prob_pruned": float(p_run[..., k][d].mean()) if n else math.nan})
    out.table("lape_dense_per_layer", dense_rows)
    out.table("lape_neurons", neuron_rows)
    out.table("lape_runs", rows)
    _plot_lape(out, runs, langs, dense_rows, rows, len(layers), opts)
    return {"langs": langs, "activation": opts.activation,
            "dense_neurons_per_lang": {lang: int(spec[..., k].sum()) for k, lang in enumerate(langs)},
            "runs": rows}


def _plot_lape(out, runs, langs, dense_rows, rows, n_layers, opts) -> None:
    import numpy as np
    from .common import heatmap, lang_name, plt as _plt
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.42 * n_layers + 4, 0.5 * len(langs) + 2.2))
    v = np.zeros((len(langs), n_layers))
    for r in dense_rows:
        v[langs.index(r["lang"]), r["layer"]] = r["neurons"]
    heatmap(ax, v, [lang_name(x) for x in langs], [str(i) for i in range(n_layers)],
            "language-specific neurons", fmt="{:.0f}", cmap="Blues")
    ax.set_xlabel("decoder layer")
    ax.set_title(f"Language-specific FFN neurons of the dense model (LAPE, lowest-entropy "
                 f"{100 * opts.top_rate:g}%, activation: {opts.activation})")
    out.figure(fig, "lape_dense")
    fig, axes = plt.subplots(1, 2, figsize=(2.4 * len(langs) + 7, 0.55 * len(runs) + 2.8))
    val = {(r["run"], r["lang"]): r for r in rows}
    heatmap(axes[0], [[val[(r.key, lang)]["lost_share"] for lang in langs] for r in runs],
            [r.label for r in runs], [f"{lang_name(x)} ({val[(runs[0].key, x)]['neurons']})" for x in langs],
            "share of the language's neurons no longer specific to it", fmt="{:.2f}", cmap="Reds", vmin=0, vmax=1)
    axes[0].set_title("Language-specific neurons lost by pruning")
    heatmap(axes[1], [[val[(r.key, lang)]["mean_pruned_weight_share"] for lang in langs] for r in runs],
            [r.label for r in runs], [f"{lang_name(x)} ({val[(runs[0].key, x)]['neurons']})" for x in langs],
            "mean share of the neurons' weights pruned", fmt="{:.3f}", cmap="Purples", vmin=0, vmax=1)
    axes[1].set_title("Weights pruned from language-specific neurons")
    for a in axes:  # both shares on the same 0–1 scale, so equal colours mean equal shares
        a.set_xlabel("neurons of language (count)")
    axes[0].set_ylabel("calibration")
    fig.tight_layout()
    out.figure(fig, "lape_runs")
