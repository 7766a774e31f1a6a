"""Token-window recipes: ``text`` (Kurz et al.: ``nsamples`` windows of ``seqlen`` tokens per
language from raw monolingual text) and ``code`` (windows of Python source, e.g. a contrast set)."""
from __future__ import annotations

import torch

from ..calibration import Calibration, Sample, register_recipe
from ..data.code import DEFAULT_MAX_FILES, load_code
from ..data.text import load_text
from ..errors import UserError
from ..languages import resolve_langs
from ..prompts import special_prefix
from ._util import DEFAULT_SEQLEN, check_options, positive, rng_for, window_samples

DEFAULT_NSAMPLES = 32  # Kurz et al. use 128 × 8192 tokens; this default is sized for a CPU
CODE_TAG = "code"  # language tag of code samples

TEXT_OPTIONS = {"text_file": None, "text_field": "text", "dataset": None, "dataset_config": None,
                "dataset_split": "train", "max_chars": None}
CODE_OPTIONS = {"code_dir": None, "code_dataset": None, "code_config": None, "code_split": "train",
                "code_field": "content", "max_files": DEFAULT_MAX_FILES}


@register_recipe("text")
def text(tokenizer, langs=(), target_lang=None, k=None, nsamples=None, seqlen=None, seed=0, data_dir=None,
         **options) -> Calibration:
    """``nsamples`` windows of ``seqlen`` tokens per language (seeded offsets), each starting with the
    tokenizer's special prefix (<bos>). Text: option ``text_file`` (.txt/.jsonl(.gz), ``{code}``/
    ``{iso1}`` placeholders, ``text_field``), or ``dataset`` + ``dataset_config`` + ``dataset_split``
    (hub), else the FLORES calibration lines of the language."""
    opts = check_options("text", options, TEXT_OPTIONS)
    nsamples = positive("nsamples", nsamples, DEFAULT_NSAMPLES)
    seqlen = positive("seqlen", seqlen, DEFAULT_SEQLEN)
    languages = resolve_langs(langs)
    if not languages and not opts["text_file"]:
        raise UserError("calibration text needs a language: give --lang CODE (e.g. swh_Latn)")
    samples: list[Sample] = []
    for lang in languages or [None]:
        src = load_text(lang, data_dir, opts["text_file"], opts["text_field"], opts["dataset"],
                        opts["dataset_config"], opts["dataset_split"], seed, opts["max_chars"])
        tag = (lang.code,) if lang else ()
        samples += window_samples(tokenizer, src.text, nsamples, seqlen, rng_for(seed, "text", *tag), tag,
                                  src.source, src.units, what=f"text of {lang.code if lang else 'text_file'}")
    return Calibration(samples, "text", {"langs": [x.code for x in languages], "nsamples": nsamples,
                                         "seqlen": seqlen, "seed": seed, **{k_: v for k_, v in opts.items() if v}})


@register_recipe("code")
def code(tokenizer, langs=(), target_lang=None, k=None, nsamples=None, seqlen=None, seed=0, data_dir=None,
         **options) -> Calibration:
    """``nsamples`` windows of ``seqlen`` tokens of Python source: each starts in a seeded random
    file at a seeded offset, continuing into the next files (sorted order) when the file is short.
    Corpus: the interpreter's standard library, option ``code_dir``, or ``code_dataset`` (hub)."""
    opts = check_options("code", options, CODE_OPTIONS)
    nsamples = positive("nsamples", nsamples, DEFAULT_NSAMPLES)
    seqlen = positive("seqlen", seqlen, DEFAULT_SEQLEN)
    corpus = load_code(opts["code_dir"], opts["code_dataset"], opts["code_config"], opts["code_split"],
                       opts["code_field"], int(opts["max_files"]))
    prefix = special_prefix(tokenizer)
    body = seqlen - len(prefix)
    cache: dict[int, list[int]] = {}

    def tokens(j: int) -> list[int]:
        if j not in cache:
            t = corpus.read(corpus.ids[j])
            cache[j] = list(tokenizer(t.rstrip("\n") + "\n\n", add_special_tokens=False)["input_ids"]) if t else []
        return cache[j]

    rng = rng_for(seed, "code")
    samples = []
    for _ in range(nsamples):
        start = rng.randrange(len(corpus))
        ids: list[int] = []
        spans: list[tuple[str, int]] = []  # (file, first token position in ids)
        j = start
        while len(ids) <= body:
            if tokens(j):
                spans.append((corpus.ids[j], len(ids)))
                ids += tokens(j)
            j = (j + 1) % len(corpus)
            if j == start and len(ids) <= body:
                raise UserError(f"the code corpus has {len(ids)} tokens, not more than the {body} a window needs: "
                                f"give more code (option code_dir) or a smaller --seqlen")
        first_len = spans[1][1] if len(spans) > 1 else len(ids)
        off = rng.randint(0, min(first_len, len(ids) - body) - 1)
        window = ids[off:off + body]
        files = [f for n, (f, pos) in enumerate(spans)
                 if pos < off + body and (spans[n + 1][1] if n + 1 < len(spans) else len(ids)) > off]
        t = torch.tensor(prefix + window, dtype=torch.long)
        samples.append(Sample(t, torch.ones_like(t), (CODE_TAG,), text=tokenizer.decode(window),
                              source={**corpus.source, "files": files, "token_offset": off}))
    return Calibration(samples, "code", {"nsamples": nsamples, "seqlen": seqlen, "seed": seed, **corpus.source})
