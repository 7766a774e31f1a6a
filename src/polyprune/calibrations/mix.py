"""``mix``: several languages with equal shares (Kurz et al.'s bilingual / multilingual mixes)."""
from __future__ import annotations

import logging
import math

from ..calibration import RECIPES, Calibration, register_recipe
from ..errors import UserError
from ..languages import resolve_langs
from ._util import positive, truncate
from .windows import DEFAULT_NSAMPLES

log = logging.getLogger(__name__)

BASES = ("text", "monolingual", "translation")
BY = ("samples", "tokens")


@register_recipe("mix")
def mix(tokenizer, langs=(), target_lang=None, k=None, nsamples=None, seqlen=None, seed=0, data_dir=None,
        **options) -> Calibration:
    """``nsamples`` samples in all, shared equally between the ``--lang`` languages, built with recipe
    ``base`` (option; ``text`` by default, or ``monolingual`` / ``translation``; other options go to it).
    ``by="samples"``: nsamples // L samples each (the remainder goes to the first languages, with a
    warning). ``by="tokens"``: each language gets exactly the same number of real tokens — the
    smallest per-language total of ⌈nsamples / L⌉ samples; the last sample of a language is cut."""
    opts = dict(options)
    base = opts.pop("base", "text")
    by = opts.pop("by", "samples")
    if base not in BASES:
        raise UserError(f"mix: unknown base recipe {base!r}: choose one of {', '.join(BASES)}")
    if by not in BY:
        raise UserError(f"mix: by={by!r} is not valid: choose samples or tokens")
    languages = resolve_langs(langs)
    if len(languages) < 2:
        raise UserError("calibration mix needs at least two languages: give --lang A,B")
    nsamples = positive("nsamples", nsamples, DEFAULT_NSAMPLES)
    n_lang = len(languages)
    if nsamples < n_lang:
        raise UserError(f"mix: --nsamples {nsamples} is fewer than the {n_lang} languages: raise --nsamples")
    per, rest = divmod(nsamples, n_lang)
    builder = RECIPES[base]
    parts: list[Calibration] = []
    for i, lang in enumerate(languages):
        n = math.ceil(nsamples / n_lang) if by == "tokens" else per + (i < rest)
        parts.append(builder(tokenizer, langs=[lang.code], target_lang=target_lang, k=k, nsamples=n,
                             seqlen=seqlen, seed=seed, data_dir=data_dir, **opts))
    if by == "samples" and rest:
        log.warning("mix: %d samples do not split evenly over %d languages; the first %d get one more",
                    nsamples, n_lang, rest)
    samples = []
    if by == "tokens":
        budget = min(sum(s.n_tokens for s in p.samples) for p in parts)
        for p in parts:
            left = budget
            for s in p.samples:
                if left <= 0:
                    break
                samples.append(s if s.n_tokens <= left else truncate(s, left))
                left -= samples[-1].n_tokens
    else:
        for p in parts:
            samples += p.samples
    meta = {**parts[0].meta, "langs": [x.code for x in languages], "nsamples": nsamples, "base": base, "by": by}
    return Calibration(samples, "mix", meta)
