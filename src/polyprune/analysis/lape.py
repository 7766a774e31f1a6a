"""Language-specific FFN neurons by Language Activation Probability Entropy (Tang et al. 2024),
as used by Kurz et al. 2025 (Sec. 5.3, App. D.4).

p[l, j, k]: probability that FFN neuron j of layer l is active (> 0) on tokens of language k.
Normalised over languages, its entropy is LAPE (low = language-specific). Selection follows the
reference code: a neuron is a candidate only if some language's probability exceeds the 95th
percentile of all probabilities; the lowest-entropy 1 % of all neurons (over all layers) are
language-specific, and each is assigned to every language whose probability exceeds that same
percentile.
"""
from __future__ import annotations

import torch


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
