"""``mbs``: multilingual proportional calibration (Zeng et al. 2024, "multilingual brain surgeon").

``nsamples`` samples are split over languages in proportion to given language weights p_ℓ (e.g. the
model's pretraining shares): n_ℓ = max(1, round(N·p_ℓ/Σp)), then the rounding is fixed so that
Σ n_ℓ = N exactly (one sample more for the languages with the largest remainder N·p_ℓ/Σp − n_ℓ, or
one fewer, never below 1, for those with the smallest). Every language's samples come from recipe
``base`` (``text`` windows by default; ``monolingual`` / ``translation`` also work).

Weights: option ``weights`` = a YAML file (``{lang: weight}``, optionally under a ``weights:`` key),
a CSV file (``lang,weight`` lines, optional header) or a dict; default: the shipped BLOOM shares
(``polyprune/resources/mbs_bloom.yaml``). ``--lang`` picks a subset of the weighted languages
(weights renormalised over it); without ``--lang`` every weighted language is used.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Mapping

from ..calibration import RECIPES, Calibration, register_recipe
from ..errors import UserError
from ..languages import get_language, resolve_langs
from ._util import positive
from .windows import DEFAULT_NSAMPLES

log = logging.getLogger(__name__)

BLOOM_WEIGHTS = Path(__file__).resolve().parents[1] / "resources" / "mbs_bloom.yaml"
BASES = ("text", "monolingual", "translation")


def proportional_counts(weights: Mapping[str, float], n: int) -> dict[str, int]:
    """n_ℓ = max(1, round(n·p_ℓ/Σp)) (half rounds up), fixed so that Σ n_ℓ = n; ties go to the
    language listed first."""
    langs = list(weights)
    if not langs:
        raise UserError("mbs: no languages to split the calibration over")
    if n < len(langs):
        raise UserError(f"mbs: --nsamples {n} is fewer than the {len(langs)} languages (each gets at least "
                        f"one sample): raise --nsamples or give fewer --lang")
    total = float(sum(weights.values()))
    quota = {k: n * float(weights[k]) / total for k in langs}
    counts = {k: max(1, math.floor(q + 0.5)) for k, q in quota.items()}
    diff = n - sum(counts.values())
    while diff > 0:
        k = max(langs, key=lambda x: (quota[x] - counts[x], -langs.index(x)))
        counts[k] += 1
        diff -= 1
    while diff < 0:
        k = min((x for x in langs if counts[x] > 1), key=lambda x: (quota[x] - counts[x], langs.index(x)))
        counts[k] -= 1
        diff += 1
    return counts


def read_weights(source: str | Path | Mapping | None) -> dict[str, float]:
    """Language weights keyed by FLORES code, from a YAML/CSV file or a mapping (None: BLOOM's)."""
    if source is None:
        source = BLOOM_WEIGHTS
    if isinstance(source, Mapping):
        raw = dict(source["weights"]) if isinstance(source.get("weights"), Mapping) else dict(source)
        where = "mbs weights"
    else:
        p = Path(source)
        where = f"mbs weights file {p}"
        if not p.is_file():
            raise UserError(f"{where} does not exist: give a YAML ({{lang: weight}}) or CSV (lang,weight) file")
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".csv":
            raw = {}
            for row in csv.reader(text.splitlines()):
                if not row or not row[0].strip() or row[0].strip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise UserError(f"{where}: line {row!r} needs two fields, lang,weight")
                try:
                    raw[row[0].strip()] = float(row[1])
                except ValueError:
                    if raw:  # only the first line may be a header
                        raise UserError(f"{where}: weight {row[1]!r} of {row[0]!r} is not a number") from None
        else:
            import yaml
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise UserError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
            if not isinstance(data, dict):
                raise UserError(f"{where}: expected a mapping lang: weight (optionally under 'weights:')")
            raw = data.get("weights", data) if isinstance(data.get("weights"), dict) else data
    out: dict[str, float] = {}
    for key, value in raw.items():
        try:
            code = get_language(str(key)).code
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: weight {value!r} of {key!r} is not a number") from None
        if not w > 0 or not math.isfinite(w):
            raise UserError(f"{where}: weight of {key!r} is {value!r}; weights must be positive numbers")
        if code in out:
            raise UserError(f"{where}: language {code} is listed twice ({key!r})")
        out[code] = w
    if not out:
        raise UserError(f"{where} lists no languages")
    return out


@register_recipe("mbs")
def mbs(tokenizer, langs=(), target_lang=None, k=None, nsamples=None, seqlen=None, seed=0, data_dir=None,
        **options) -> Calibration:
    """``nsamples`` samples split over languages in proportion to ``weights`` (see the module doc),
    each language's share built by recipe ``base`` (default ``text``; other options go to it)."""
    opts = dict(options)
    base = opts.pop("base", "text")
    if base not in BASES:
        raise UserError(f"mbs: unknown base recipe {base!r}: choose one of {', '.join(BASES)}")
    weights = read_weights(opts.pop("weights", None))
    chosen = resolve_langs(langs)
    if chosen:
        missing = [x.code for x in chosen if x.code not in weights]
        if missing:
            raise UserError(f"mbs: language {missing[0]} has no weight in the weights file "
                            f"(it has {', '.join(weights)}): add it or drop it from --lang")
        weights = {x.code: weights[x.code] for x in chosen}
    nsamples = positive("nsamples", nsamples, DEFAULT_NSAMPLES)
    counts = proportional_counts(weights, nsamples)
    builder = RECIPES[base]
    samples = []
    for code, n in counts.items():
        part = builder(tokenizer, langs=[code], target_lang=target_lang, k=k, nsamples=n, seqlen=seqlen,
                       seed=seed, data_dir=data_dir, **opts)
        samples += part.samples
    log.info("mbs: samples per language %s", counts)
    return Calibration(samples, "mbs", {"langs": list(counts), "nsamples": nsamples, "base": base,
                                        "weights": weights, "counts": counts, "seqlen": seqlen, "seed": seed})
