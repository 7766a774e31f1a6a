"""Few-shot demonstration recipes of Kim et al. (2024): ``translation`` (f_mt) and ``monolingual`` (f_lm).

Each sample is k demonstrations built from FLORES calibration lines (see
:mod:`polyprune.data.flores`); the N×k lines of one language (pair) are drawn without replacement
with a seeded generator. Samples are variable-length (no padding), cut to ``seqlen`` tokens.
With several ``--lang`` values every language (pair) gets ``nsamples`` samples.
"""
from __future__ import annotations

from ..calibration import Calibration, register_recipe
from ..data import flores
from ..errors import UserError
from ..languages import get_language, resolve_langs
from ..prompts import MONOLINGUAL_TEMPLATE, TRANSLATION_TEMPLATE, monolingual_demos, separator, translation_demos
from ._util import DEFAULT_SEQLEN, check_options, demo_sample, positive, rng_for

DEFAULT_K = 4
DEFAULT_NSAMPLES = 100  # Kim et al.: N = 100 demonstrations of n = 4 shots
DEFAULT_TARGET = "eng_Latn"


def draw_groups(n_items: int, nsamples: int, k: int, rng, what: str) -> list[list[int]]:
    """``nsamples`` groups of ``k`` distinct indices in ``range(n_items)``, no index used twice."""
    need = nsamples * k
    if need > n_items:
        raise UserError(f"too few sentences for {what}: --nsamples {nsamples} × --k {k} = {need} distinct lines "
                        f"needed, {n_items} available: lower --nsamples or --k")
    chosen = rng.sample(range(n_items), need)
    return [chosen[i * k:(i + 1) * k] for i in range(nsamples)]


@register_recipe("translation")
def translation(tokenizer, langs=(), target_lang=None, k=None, nsamples=None, seqlen=None, seed=0,
                data_dir=None, **options) -> Calibration:
    """k demonstrations ``"{Src}: s{sep}{Tgt}: t{sep}"`` per sample, source ``--lang``, target
    ``--target-lang`` (English by default). Options: ``sep`` (default: :func:`polyprune.prompts.separator`),
    ``template`` (default ``TRANSLATION_TEMPLATE``)."""
    opts = check_options("translation", options, {"sep": None, "template": TRANSLATION_TEMPLATE})
    k, nsamples = positive("k", k, DEFAULT_K), positive("nsamples", nsamples, DEFAULT_NSAMPLES)
    seqlen = positive("seqlen", seqlen, DEFAULT_SEQLEN)
    sources = resolve_langs(langs)
    if not sources:
        raise UserError("calibration translation needs a source language: give --lang CODE (e.g. fra_Latn)")
    tgt = get_language(target_lang or DEFAULT_TARGET)
    sep = separator(tokenizer, opts["sep"])
    dataset = flores.source_name("calibration", data_dir)
    samples = []
    for src in sources:
        if src == tgt:
            raise UserError(f"translation demonstrations need two languages, got {src.code} → {tgt.code}: "
                            f"change --lang or --target-lang")
        pairs = flores.load_parallel(src, tgt, "calibration", data_dir)
        rng = rng_for(seed, "translation", src.code, tgt.code)
        for group in draw_groups(len(pairs), nsamples, k, rng, f"translation {src.code}→{tgt.code}"):
            rows = [pairs[i] for i in group]
            text = translation_demos([(s, t) for _, s, t in rows], src, tgt, sep, opts["template"])
            samples.append(demo_sample(tokenizer, text, seqlen, (src.code, tgt.code),
                                       {"dataset": dataset, "lines": [i for i, _, _ in rows]}))
    return Calibration(samples, "translation", {
        "langs": [s.code for s in sources], "target_lang": tgt.code, "k": k, "nsamples": nsamples,
        "seqlen": seqlen, "seed": seed, "sep": sep, "template": opts["template"], "dataset": dataset})


@register_recipe("monolingual")
def monolingual(tokenizer, langs=(), target_lang=None, k=None, nsamples=None, seqlen=None, seed=0,
                data_dir=None, **options) -> Calibration:
    """k demonstrations ``"{Lang}: s{sep}"`` of one language per sample (Kim et al.'s f_lm).
    Options: ``sep``, ``template`` (default ``MONOLINGUAL_TEMPLATE``)."""
    opts = check_options("monolingual", options, {"sep": None, "template": MONOLINGUAL_TEMPLATE})
    k, nsamples = positive("k", k, DEFAULT_K), positive("nsamples", nsamples, DEFAULT_NSAMPLES)
    seqlen = positive("seqlen", seqlen, DEFAULT_SEQLEN)
    languages = resolve_langs(langs)
    if not languages:
        raise UserError("calibration monolingual needs a language: give --lang CODE (e.g. fra_Latn)")
    sep = separator(tokenizer, opts["sep"])
    dataset = flores.source_name("calibration", data_dir)
    samples = []
    for lang in languages:
        lines = flores.load_flores(lang, "calibration", data_dir)
        rng = rng_for(seed, "monolingual", lang.code)
        for group in draw_groups(len(lines), nsamples, k, rng, f"monolingual {lang.code}"):
            rows = [lines[i] for i in group]
            text = monolingual_demos([s for _, s in rows], lang, sep, opts["template"])
            samples.append(demo_sample(tokenizer, text, seqlen, (lang.code,),
                                       {"dataset": dataset, "lines": [i for i, _ in rows]}))
    return Calibration(samples, "monolingual", {
        "langs": [x.code for x in languages], "k": k, "nsamples": nsamples, "seqlen": seqlen, "seed": seed,
        "sep": sep, "template": opts["template"], "dataset": dataset})
