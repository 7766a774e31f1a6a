"""The built-in evaluation tasks (registered on import)."""
from __future__ import annotations

import random

from ..errors import UserError
from ..languages import get_language
from . import Context, Task, register

XNLI_LANGS = ("arb_Arab", "bul_Cyrl", "deu_Latn", "ell_Grek", "eng_Latn", "spa_Latn", "fra_Latn", "hin_Deva",
              "rus_Cyrl", "swh_Latn", "tha_Thai", "tur_Latn", "urd_Arab", "vie_Latn", "zho_Hans")
MARC_LANGS = ("eng_Latn", "deu_Latn", "spa_Latn", "fra_Latn", "jpn_Jpan", "zho_Hans")
PPL_LANGS = ("arb_Arab", "deu_Latn", "eng_Latn", "spa_Latn", "rus_Cyrl", "swh_Latn", "zho_Hans")
MT_LANGS = ("fra_Latn", "spa_Latn", "zho_Hans", "hin_Deva", "swh_Latn")
BOS_NOTE = "<bos> (else <eos>) prefixed, text tokens without special tokens, nothing appended"


def _head(items: list, ctx: Context) -> list:
    return items[: ctx.limit] if ctx.limit else items


def _sample(items: list, ctx: Context) -> list:
    """Seeded sample of ``limit`` items, kept in file order (for sorted files such as MARC)."""
    if not ctx.limit or ctx.limit >= len(items):
        return items
    keep = sorted(random.Random(ctx.seed).sample(range(len(items)), ctx.limit))
    return [items[i] for i in keep]


def _pad(ctx: Context) -> int:
    t = ctx.tokenizer
    return t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0)


# ---------------------------------------------------------------- perplexity
def _ppl_load(ctx: Context, code: str) -> list:
    from ..data.flores import load_flores
    return _head(load_flores(code, "evaluation", ctx.data_dir), ctx)


def _ppl_run(ctx: Context, code: str, items: list) -> dict:
    from .perplexity import perplexity
    o = ctx.options
    r = perplexity(ctx.model, ctx.tokenizer, [s for _, s in items], ctx.batch_size, o["max_length"], o["stride"],
                   progress=f"perplexity {code}")
    ctx.cache["ppl_window"] = (r["max_length"], r["stride"])
    per = r.pop("per_text")
    metrics = {k: r[k] for k in ("ppl", "bpb", "nll", "tokens", "bytes", "nll_per_token")} | {"n": len(items)}
    return {"value": r["ppl"], "metrics": metrics, "per_example": per,
            "examples": [{"id": i} | p for (i, _), p in zip(items, per)]}


def _ppl_settings(ctx: Context) -> dict:
    max_length, stride = ctx.cache.get("ppl_window", (ctx.options["max_length"], ctx.options["stride"]))
    return {"data": "FLORES-200 devtest evaluation lines (line id < 500), first --limit lines",
            "scoring": f"each sentence scored alone: {BOS_NOTE}",
            "token_ppl": "exp(total NLL / total predicted tokens)", "bpb": "total NLL / ln 2 / total UTF-8 bytes",
            "windowing": {"max_length": max_length, "stride": stride,
                          "rule": "texts longer than max_length-1 tokens: windows of <bos> + max_length-1 tokens, "
                                  "ends advancing by stride, each token scored once"}}


register(Task("perplexity", "ppl", False, _ppl_load, _ppl_run, _ppl_settings, PPL_LANGS,
              {"max_length": None, "stride": None}, "token perplexity and bits per byte on FLORES evaluation lines"))


# ---------------------------------------------------------------- translation
def _mt_load(ctx: Context, code: str) -> list:
    from ..data.flores import load_parallel
    o = ctx.options
    tgt = get_language(o["tgt"]).code
    if tgt == code:
        raise UserError(f"translation: source and target are both {code}; pick another --lang or tgt=...")
    if o["source"] == "flores":
        test = load_parallel(code, tgt, "evaluation", ctx.data_dir)
    elif o["source"] == "xnli":
        from ..data.xnli import load_xnli
        a, b = load_xnli(code, "test", ctx.data_dir), load_xnli(tgt, "test", ctx.data_dir)
        seen, test = set(), []
        for x, y in zip(a, b):  # unique premises, parallel by row
            if x["premise"] not in seen:
                seen.add(x["premise"])
                test.append((x["id"], x["premise"], y["premise"]))
    else:
        raise UserError(f"translation: source must be flores or xnli (got {o['source']!r})")
    demos_pool = load_parallel(code, tgt, "calibration", ctx.data_dir)
    from .translation import pick_demos
    ctx.cache.setdefault("demos", {})[code] = pick_demos(demos_pool, int(o["k"]), ctx.seed)
    return _head(test, ctx)


def _mt_run(ctx: Context, code: str, items: list) -> dict:
    from ..prompts import separator, translation_prompt
    from .translation import corpus_metrics, generate
    o = ctx.options
    tgt = get_language(o["tgt"]).code
    sep = separator(ctx.tokenizer, o["sep"])
    ctx.cache["sep"] = sep
    demos = ctx.cache["demos"][code]
    prompts = [translation_prompt([(s, t) for _, s, t in demos], src, code, tgt, sep) for _, src, _ in items]
    hyps = generate(ctx.model, ctx.tokenizer, prompts, sep, int(o["max_new_tokens"]), ctx.batch_size,
                    progress=f"translate {code}→{tgt}")
    refs = [t for _, _, t in items]
    m = corpus_metrics(hyps, refs, tgt)
    sent = m.pop("sentence_bleu")
    m |= {"n": len(items), "demo_line_ids": [i for i, _, _ in demos], "tgt": tgt}
    ctx.cache["versions"] = {"sacrebleu_signature": m["bleu_signature"]}
    examples = [{"id": i, "source": s, "prediction": h, "reference": r, "sentence_bleu": b}
                for (i, s, r), h, b in zip(items, hyps, sent)]
    if ctx.cache.get("first_prompt") is None:
        ctx.cache["first_prompt"] = prompts[0]
    return {"value": m["bleu"], "metrics": m, "per_example": hyps, "examples": examples}


def _mt_settings(ctx: Context) -> dict:
    from ..prompts import TRANSLATION_TEMPLATE
    o = ctx.options
    return {"direction": f"<lang> → {get_language(o['tgt']).code}", "k": o["k"],
            "demos": "k seeded FLORES calibration lines (line id >= 500), same for every test sentence",
            "test": "FLORES evaluation lines (line id < 500)" if o["source"] == "flores"
            else "XNLI test unique premises (parallel by row)",
            "prompt": {"template": TRANSLATION_TEMPLATE, "separator": ctx.cache.get("sep"),
                       "query": "{src_name}: {source}{sep}{tgt_name}:", "encoding": BOS_NOTE,
                       "example": ctx.cache.get("first_prompt")},
            "decoding": {"strategy": "greedy, KV cache, batched with left padding (sorted by prompt length)",
                         "max_new_tokens": o["max_new_tokens"], "stop": "separator or eos; output cut at the "
                         "first separator and stripped"},
            "metrics": "sacrebleu corpus BLEU (13a; zh for Chinese; ja/ko-mecab when installed), chrF, "
                       "spBLEU (flores200 SPM) only when its model is cached offline"}


register(Task("translation", "bleu", True, _mt_load, _mt_run, _mt_settings, MT_LANGS,
              {"k": 4, "tgt": "eng_Latn", "max_new_tokens": 128, "source": "flores", "sep": None},
              "few-shot translation into English (BLEU, chrF)"))


# ---------------------------------------------------------------- cloze: XNLI, MARC
def _check_norm(ctx: Context) -> str:
    from .cloze import NORMS
    norm = ctx.options["norm"]
    if norm not in NORMS:
        raise UserError(f"norm must be one of {', '.join(NORMS)} (got {norm!r})")
    return norm


def _cloze_run(ctx: Context, code: str, items: list, template) -> dict:
    from .cloze import classify
    norm = _check_norm(ctx)
    res = classify(ctx.model, ctx.tokenizer, items, template, norm, max(ctx.batch_size, len(template.verbalizers)),
                   progress=f"{template.name} {code}")
    v = template.verbalizers
    correct = [int(r["pred"] == it["label"]) for r, it in zip(res, items)]
    best = {n: [max(range(len(v)), key=lambda j: (r[n][j], -j)) for r in res] for n in ("sum", "mean")}
    metrics = {"accuracy": sum(correct) / len(items), "n": len(items), "norm": norm,
               "accuracy_sum": sum(p == it["label"] for p, it in zip(best["sum"], items)) / len(items),
               "accuracy_mean": sum(p == it["label"] for p, it in zip(best["mean"], items)) / len(items),
               "predicted_label_counts": {v[j]: sum(r["pred"] == j for r in res) for j in range(len(v))}}
    examples = [{"id": it["id"], "prediction": v[r["pred"]], "label": v[it["label"]], "correct": c,
                 "sum": r["sum"], "mean": r["mean"], "tokens": r["tokens"]} for it, r, c in zip(items, res, correct)]
    return {"value": metrics["accuracy"], "metrics": metrics, "per_example": correct, "examples": examples}


def _cloze_settings(ctx: Context, template, data: str) -> dict:
    return {"data": data, "template": template.pattern, "verbalizers": list(template.verbalizers),
            "language_of_template": "English for every language (Lin et al. 2022)",
            "scoring": f"log-likelihood of the whole filled sequence given only the start token ({BOS_NOTE}); "
                       f"'sum' = total, 'mean' = per predicted token; prediction by norm={ctx.options['norm']}; "
                       "ties → first label", "accuracy_scale": "fraction (0-1)"}


def _xnli_load(ctx: Context, code: str) -> list:
    from ..data.xnli import load_xnli
    return _head(load_xnli(code, ctx.options["split"], ctx.data_dir), ctx)


def _xnli_run(ctx, code, items):
    from .cloze import XNLI_TEMPLATE
    return _cloze_run(ctx, code, items, XNLI_TEMPLATE)


def _xnli_settings(ctx):
    from .cloze import XNLI_TEMPLATE
    return _cloze_settings(ctx, XNLI_TEMPLATE, f"XNLI {ctx.options['split']}, first --limit rows (3 hypotheses "
                                               "per premise; row i parallel across languages)")


register(Task("xnli", "accuracy", True, _xnli_load, _xnli_run, _xnli_settings, XNLI_LANGS,
              {"norm": "sum", "split": "test"}, "zero-shot XNLI cloze accuracy"))


def _marc_load(ctx: Context, code: str) -> list:
    from ..data.marc import load_marc
    return _sample(load_marc(code, ctx.data_dir), ctx)


def _marc_run(ctx, code, items):
    from .cloze import MARC_TEMPLATE
    return _cloze_run(ctx, code, items, MARC_TEMPLATE)


def _marc_settings(ctx):
    from .cloze import MARC_TEMPLATE
    return _cloze_settings(ctx, MARC_TEMPLATE, "MARC test, binary (1-2 vs 4-5 stars); --limit: seeded sample "
                                               "(file is sorted by stars), kept in file order")


register(Task("marc", "accuracy", True, _marc_load, _marc_run, _marc_settings, MARC_LANGS,
              {"norm": "sum"}, "zero-shot MARC sentiment cloze accuracy"))


# ---------------------------------------------------------------- RankC (XNLI)
def _rankc_load(ctx: Context, code: str) -> list:
    from ..data.xnli import load_xnli
    if code == "eng_Latn":
        raise UserError("rankc compares English with another language: give non-English --lang values")
    if "rankc_en_items" not in ctx.cache:
        ctx.cache["rankc_en_items"] = _head(load_xnli("eng_Latn", ctx.options["split"], ctx.data_dir), ctx)
    return _head(load_xnli(code, ctx.options["split"], ctx.data_dir), ctx)


def _rankc_english(ctx: Context) -> list:
    from .cloze import XNLI_TEMPLATE, classify
    if "rankc_en" not in ctx.cache:
        ctx.cache["rankc_en"] = classify(ctx.model, ctx.tokenizer, ctx.cache["rankc_en_items"], XNLI_TEMPLATE,
                                         _check_norm(ctx), max(ctx.batch_size, 3), progress="xnli-en eng_Latn")
    return ctx.cache["rankc_en"]


def _rankc_run(ctx: Context, code: str, items: list) -> dict:
    from .cloze import XNLI_TEMPLATE, classify
    from .consistency import rankc, ranking
    norm = _check_norm(ctx)
    en = _rankc_english(ctx)
    res = classify(ctx.model, ctx.tokenizer, items, XNLI_TEMPLATE, norm, max(ctx.batch_size, 3),
                   progress=f"rankc {code}")
    value, per = rankc([r[norm] for r in en], [r[norm] for r in res])
    v = XNLI_TEMPLATE.verbalizers
    examples = [{"id": it["id"], "ranking_en": [v[j] for j in ranking(e[norm])],
                 "ranking": [v[j] for j in ranking(r[norm])], "consist": c}
                for it, e, r, c in zip(items, en, res, per)]
    agree = sum(e["pred"] == r["pred"] for e, r in zip(en, res)) / len(items)
    return {"value": value, "metrics": {"rankc": value, "n": len(items), "norm": norm, "top1_agreement": agree},
            "per_example": per, "examples": examples}


def _rankc_settings(ctx: Context) -> dict:
    return {"data": f"XNLI {ctx.options['split']}, first --limit rows of English and of each language (parallel)",
            "definition": "Kim et al. 2024 App. E: candidates ranked by descending score (norm), "
                          "consist = sum_j w_j * |top-j(en) ∩ top-j(l)| / j, w = softmax([N-1..0]); mean over examples",
            "scores": f"XNLI cloze scores, norm={ctx.options['norm']}; English scored once on the dense/given model "
                      "(before any LRP2 projection)"}


register(Task("rankc", "rankc", True, _rankc_load, _rankc_run, _rankc_settings,
              tuple(c for c in XNLI_LANGS if c != "eng_Latn"), {"norm": "sum", "split": "test"},
              "RankC consistency with English on XNLI", lambda ctx, codes: _rankc_english(ctx)))

from . import lm_eval_bridge  # noqa: E402,F401  (registers lm-eval)
