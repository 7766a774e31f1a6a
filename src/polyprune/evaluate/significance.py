"""Paired significance tests between two evaluations of the same examples.

* :func:`paired_bootstrap` — standard two-sided paired bootstrap: resample examples with
  replacement B times, δ_b = stat(a[idx]) − stat(b[idx]); under H0 the centred δ_b − δ spreads like
  δ, so p = #{|δ_b − δ| ≥ |δ|} / B (δ = 0 gives p = 1).
* :func:`fornaciari_bootstrap` — Fornaciari et al. (2022, boostsa), after Berg-Kirkpatrick et
  al. (2012) and Søgaard et al. (2014): B subsamples of ``sample_frac``·n examples without
  replacement; p = #{δ_s > 2δ} / B, with δ oriented towards the observed winner (boostsa
  orients it towards h1; here a δ < 0 simply swaps roles, so p answers "is the winner better").
* :func:`bleu_bootstrap` — sacrebleu's paired bootstrap resampling (Koehn 2004); identical
  hypotheses give p = 1 (sacrebleu's statistic degenerates there).

``compare(result_a, result_b)`` applies the right test per language to two result dicts
(``results/<task>.json``); ``significant`` is p < :data:`ALPHA` (0.1, as Kim et al.).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError

ALPHA = 0.1
RESAMPLES = 1000


def _mean(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return x[idx].mean(-1)


def _paired(a: Sequence, b: Sequence, stat) -> tuple[np.ndarray, np.ndarray, float]:
    """Both score arrays (rows = examples) and the observed difference of the statistic."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("paired tests need two non-empty score lists of the same length")
    full = np.arange(len(a))[None]
    return a, b, float(stat(a, full)[0] - stat(b, full)[0])


def paired_bootstrap(a: Sequence, b: Sequence, n_resamples: int = RESAMPLES, seed: int = 0,
                     stat: Callable[[np.ndarray, np.ndarray], np.ndarray] = _mean) -> dict:
    """Two-sided paired bootstrap. ``stat(values, idx[B, n]) → [B]`` (default: mean)."""
    a, b, delta = _paired(a, b, stat)
    n = len(a)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    deltas = stat(a, idx) - stat(b, idx)
    p = 1.0 if delta == 0 else float(np.mean(np.abs(deltas - delta) >= abs(delta) - 1e-12))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"delta": delta, "p_value": p, "ci95": [float(lo), float(hi)], "resamples": n_resamples, "seed": seed,
            "test": "paired bootstrap, two-sided (centred)"}


def fornaciari_bootstrap(a: Sequence, b: Sequence, n_resamples: int = RESAMPLES, sample_frac: float = 0.1,
                         seed: int = 0, stat: Callable[[np.ndarray, np.ndarray], np.ndarray] = _mean) -> dict:
    """boostsa-style test: p = fraction of subsamples whose δ exceeds twice the observed δ."""
    a, b, delta = _paired(a, b, stat)
    n = len(a)
    k = max(1, int(n * sample_frac))
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(n, size=k, replace=False) for _ in range(n_resamples)])
    sign = 1.0 if delta >= 0 else -1.0
    deltas = sign * (stat(a, idx) - stat(b, idx))
    p = 1.0 if delta == 0 else float(np.mean(deltas > 2 * abs(delta)))
    return {"delta": delta, "p_value": p, "resamples": n_resamples, "sample_size": k, "seed": seed,
            "test": "Fornaciari et al. 2022 (boostsa): subsample delta > 2x observed delta"}


@contextmanager
def _sacrebleu_seed(seed: int):
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def bleu_bootstrap(hyps_a: Sequence[str], hyps_b: Sequence[str], refs: Sequence[str], tokenize: str = "13a",
                   n_resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """sacrebleu's paired bootstrap (system a against baseline b)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest
    if not (len(hyps_a) == len(hyps_b) == len(refs)) or not refs:
        raise ValueError("BLEU bootstrap needs hypotheses of both systems for the same references")
    with _sacrebleu_seed(seed):
        test = PairedTest([("b", list(hyps_b)), ("a", list(hyps_a))], {"BLEU": BLEU(tokenize=tokenize)},
                          references=[list(refs)], test_type="bs", n_samples=n_resamples)
        sigs, res = test()
    base, sys_ = res["BLEU"][0], res["BLEU"][1]
    # identical outputs: sacrebleu's statistic degenerates to p = 1/(B+1); there is no difference at all
    p = 1.0 if list(hyps_a) == list(hyps_b) else float(sys_.p_value)
    return {"delta": float(sys_.score - base.score), "p_value": p, "resamples": n_resamples,
            "seed": seed, "test": "sacrebleu paired bootstrap (Koehn 2004)", "signature": str(sigs["BLEU"])}


def _ppl_stat(pairs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Corpus perplexity of a resample: pairs[:, 0] NLL, pairs[:, 1] token counts."""
    return np.exp(pairs[idx, 0].sum(-1) / pairs[idx, 1].sum(-1))


def _ppl_bootstrap(a: list[dict], b: list[dict], n_resamples: int, seed: int) -> dict:
    pa = np.array([[x["nll"], x["tokens"]] for x in a], dtype=np.float64)
    pb = np.array([[x["nll"], x["tokens"]] for x in b], dtype=np.float64)
    r = paired_bootstrap(pa, pb, n_resamples, seed, stat=_ppl_stat)
    r["test"] = "paired bootstrap over sentences of corpus perplexity, two-sided (centred)"
    return r


def compare(result_a: dict, result_b: dict, n_resamples: int = RESAMPLES, seed: int = 0,
            alpha: float = ALPHA) -> dict[str, dict]:
    """Per language (FLORES code) shared by two results of one task: a vs b with p-values.

    accuracy-like metrics: standard two-sided and Fornaciari p (``p_value`` is the standard one);
    BLEU: sacrebleu's paired bootstrap; perplexity: bootstrap of the corpus perplexity."""
    if result_a.get("task") != result_b.get("task"):
        raise UserError(f"cannot compare results of different tasks ({result_a.get('task')} vs {result_b.get('task')})")
    metric = result_a["primary"]["metric"]
    out = {}
    for lang in sorted(set(result_a["per_example"]) & set(result_b["per_example"])):
        ea, eb = result_a["per_example"][lang], result_b["per_example"][lang]
        ids_a = [x.get("id") for x in result_a.get("examples", {}).get(lang, [])]
        ids_b = [x.get("id") for x in result_b.get("examples", {}).get(lang, [])]
        if len(ea) != len(eb) or (ids_a and ids_b and ids_a != ids_b):
            raise UserError(f"{lang}: the two results scored different examples (use the same --limit/--seed)")
        if metric == "bleu":
            refs = [x["reference"] for x in result_a["examples"][lang]]
            tok = result_a["metrics"][lang].get("bleu_tokenize", "13a")
            r = bleu_bootstrap(ea, eb, refs, tok, n_resamples, seed)
        elif metric == "ppl":
            r = _ppl_bootstrap(ea, eb, n_resamples, seed)
        else:
            r = paired_bootstrap(ea, eb, n_resamples, seed)
            f = fornaciari_bootstrap(ea, eb, n_resamples, seed=seed)
            r["p_value_fornaciari"] = f["p_value"]
            r["significant_fornaciari"] = bool(f["p_value"] < alpha)
        r.update({"metric": metric, "a": result_a["primary"]["per_lang"].get(lang),
                  "b": result_b["primary"]["per_lang"].get(lang), "n": len(ea),
                  "significant": bool(r["p_value"] < alpha)})
        out[lang] = r
    return out


def marker(p: float | None, alpha: float = ALPHA) -> str:
    """``†`` when p < alpha (table marker), else ``""``."""
    return "†" if p is not None and not math.isnan(p) and p < alpha else ""
