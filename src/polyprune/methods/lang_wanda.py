"""Language-aware Wanda (``lang-wanda``): this project's own variant, built on per-language statistics.

One calibration pass keeps, per input feature j and per calibration language ℓ (the samples'
language tags), the token-count normalised norm n_ℓj = sqrt(Σ_tokens x_j² / tokens_ℓ) and the
activation probability P(x_j > 0). The score is

    |W_ij| · (mean_ℓ n_ℓj + β · std_ℓ n_ℓj)        (population std over languages, β = 1)

so every language counts equally however many tokens it brought, and features whose importance differs
between languages are protected in proportion to that spread. With one language it ranks weights like
Wanda. Compared per output row (Wanda's rule), or with Wanda's α variant.

Extension point: ``LANG_SCORES`` maps a name to ``(summary, beta) -> per-feature norm``; give
``-o score=NAME``. Multilingual Wanda variants whose exact formulas are published (e.g. M-Wanda,
Choenni & Titov 2025) can be registered there with :func:`register_lang_score`. It is *not* M-Wanda.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError
from ..options import Bool, Number, Strict
from ..registry import Registry
from . import MethodResult, Spec, register
from .wanda import prune_scores, wanda_scores


def language_summary(ms) -> dict[str, torch.Tensor]:
    """Per input feature over the calibration languages of one ModuleStats (kind ``per_lang``):
    ``norms`` [L, in], ``mean``, ``std`` (population), ``actprob`` [L, in] and ``langs``."""
    norms = ms.lang_norms()
    if not norms:
        raise UserError("language-aware scores need per-language statistics (kind 'per_lang'): the calibration "
                        "samples carry no language tags")
    langs = sorted(norms)
    n = torch.stack([norms[k] for k in langs]).to(torch.float32)
    probs = ms.lang_activation_probability()
    return {"langs": langs, "norms": n, "mean": n.mean(0), "std": n.std(0, unbiased=False) if len(langs) > 1
            else torch.zeros_like(n[0]), "actprob": torch.stack([probs[k] for k in langs]).to(torch.float32)}


LANG_SCORES: Registry[Callable[[dict, float], torch.Tensor]] = Registry("language-aware score")


def register_lang_score(name: str):
    """Register a per-feature language-aware norm ``fn(summary, beta) -> [in]`` (see ``language_summary``)."""
    def deco(fn):
        return LANG_SCORES.register(name, fn)
    return deco


@register_lang_score("mean_std")
def mean_plus_std(summary: dict, beta: float) -> torch.Tensor:
    """mean_ℓ n_ℓ + β·std_ℓ n_ℓ."""
    return summary["mean"] + beta * summary["std"]


def lang_wanda_scores(W: torch.Tensor, ms, beta: float = 1.0, score: str = "mean_std") -> torch.Tensor:
    return wanda_scores(W, LANG_SCORES.resolve(score)(language_summary(ms), beta))


class LangWandaOptions(Strict):
    beta: Number = 1.0
    score: str = "mean_std"  # a registered language score (LANG_SCORES)
    use_variant: Bool = False


@register("lang-wanda", needs=("per_lang",), options=LangWandaOptions)
def lang_wanda(W: torch.Tensor, stats, spec: Spec) -> MethodResult:
    """Language-aware Wanda: |W|·(mean_ℓ n_ℓ + β·std_ℓ n_ℓ) over calibration languages ℓ (n_ℓ token-normalised
    feature norms), compared per row as Wanda."""
    beta = spec.options["beta"]
    if beta < 0:
        raise UserError(f"lang-wanda beta={beta} is negative: give β ≥ 0")
    return MethodResult(prune_scores(lang_wanda_scores(W, stats.target, beta, spec.options["score"]), spec))
