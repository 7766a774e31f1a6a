"""Few-shot translation (Kim et al.): k demonstrations in the shared prompt format, greedy decoding.

The prompt is :func:`polyprune.prompts.translation_prompt` (k demonstrations drawn, seeded, from
FLORES *calibration* lines, the same for every test sentence), encoded as the start token +
the prompt's tokens (see :mod:`.scoring`). Decoding is greedy with a KV cache, batched with left
padding (batches sorted by prompt length), and stops at the separator, at eos or after
``max_new_tokens``; the output is cut at the first separator and stripped.

BLEU is sacrebleu's corpus BLEU with the ``13a`` tokenizer, ``zh`` for Chinese targets and
``ja-mecab`` / ``ko-mecab`` for Japanese / Korean targets when MeCab is installed (else ``char``,
recorded); chrF is sacrebleu's chrF (n=6, β=2); spBLEU uses the ``flores200`` SentencePiece model
only when it is already in sacrebleu's cache (it is never downloaded here; else ``null`` + reason).
"""
from __future__ import annotations

import logging
import os
import random
from typing import Sequence

import torch

from ..errors import UserError
from ..languages import get_language
from ..progress import track
from .scoring import encode, model_device

log = logging.getLogger(__name__)


def bleu_tokenizer(tgt: str) -> tuple[str, str | None]:
    """sacrebleu tokenizer for target language ``tgt`` and a note when a fallback was used."""
    code = get_language(tgt).code
    if code.startswith("zho_"):
        return "zh", None
    for prefix, mecab in (("jpn_", "ja-mecab"), ("kor_", "ko-mecab")):
        if code.startswith(prefix):
            try:
                from sacrebleu.metrics.bleu import BLEU
                BLEU(tokenize=mecab).corpus_score(["a"], [["a"]])
                return mecab, None
            except Exception as e:  # MeCab / dictionary missing
                return "char", f"{mecab} unavailable ({type(e).__name__}): install sacrebleu[{mecab[:2]}]"
    return "13a", None


def spbleu_model_path() -> str:
    from sacrebleu.utils import SACREBLEU_DIR
    return os.path.join(SACREBLEU_DIR, "models", "flores200sacrebleuspm")


def corpus_metrics(hyps: Sequence[str], refs: Sequence[str], tgt: str) -> dict:
    """BLEU (with signature), chrF, spBLEU (or null + reason) and per-sentence BLEU."""
    from sacrebleu.metrics import BLEU, CHRF
    tok, note = bleu_tokenizer(tgt)
    bleu = BLEU(tokenize=tok)
    b = bleu.corpus_score(list(hyps), [list(refs)])
    chrf = CHRF()
    c = chrf.corpus_score(list(hyps), [list(refs)])
    out = {"bleu": b.score, "bleu_tokenize": tok, "bleu_signature": str(bleu.get_signature()),
           "bleu_details": {"precisions": b.precisions, "bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len},
           "chrf": c.score, "chrf_signature": str(chrf.get_signature())}
    if note:
        out["bleu_note"] = note
    if os.path.isfile(spbleu_model_path()):
        sp = BLEU(tokenize="flores200")
        out["spbleu"] = sp.corpus_score(list(hyps), [list(refs)]).score
        out["spbleu_signature"] = str(sp.get_signature())
    else:
        out["spbleu"] = None
        out["spbleu_reason"] = (f"SentencePiece model for spBLEU (flores200) not available offline: "
                                f"{spbleu_model_path()} missing")
    sent = BLEU(tokenize=tok, effective_order=True)
    out["sentence_bleu"] = [sent.sentence_score(h, [r]).score for h, r in zip(hyps, refs)]
    return out


def pick_demos(pairs: Sequence[tuple[int, str, str]], k: int, seed: int) -> list[tuple[int, str, str]]:
    """k demonstrations, seeded, from the calibration lines (kept in line order)."""
    if len(pairs) < k:
        raise UserError(f"only {len(pairs)} calibration lines for {k} demonstrations")
    chosen = random.Random(seed).sample(range(len(pairs)), k)
    return [pairs[i] for i in sorted(chosen)]


def cut(text: str, sep: str) -> str:
    """The generation up to the first separator, stripped."""
    i = text.find(sep) if sep else -1
    return (text[:i] if i >= 0 else text).strip()


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], sep: str, max_new_tokens: int = 128,
             batch_size: int = 8, progress: str | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (start token prefixed), cut at ``sep``."""
    from transformers import GenerationConfig
    dev = model_device(model)
    encoded = [encode(tokenizer, p) for p in prompts]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    stops = [eos] if eos is not None else []
    sep_ids = tokenizer(sep, add_special_tokens=False)["input_ids"] if sep else []
    single_sep = len(sep_ids) == 1 and tokenizer.decode(sep_ids) == sep
    if single_sep:
        stops.append(sep_ids[0])
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                           eos_token_id=stops or None, pad_token_id=pad,
                           stop_strings=None if single_sep or not sep else [sep])
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[str | None] = [None] * len(prompts)
    for idx in (track(batches, progress) if progress else batches):
        rows = [encoded[i] for i in idx]
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for j, r in enumerate(rows):  # left padding
            ids[j, n - len(r):] = torch.as_tensor(r)
            mask[j, n - len(r):] = 1
        gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), generation_config=cfg,
                             tokenizer=tokenizer if cfg.stop_strings else None)
        for j, i in enumerate(idx):
            out[i] = cut(tokenizer.decode(gen[j, n:], skip_special_tokens=True), sep)
    return out  # type: ignore[return-value]
