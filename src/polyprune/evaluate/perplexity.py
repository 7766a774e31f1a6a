"""Per-text negative log-likelihood → token perplexity and bits per byte.

Each text is scored on its own with the start token prefixed (``<bos>``, else ``<eos>``; see
:mod:`.scoring`); every text token is predicted, nothing is appended. Texts longer than
``max_length`` tokens are cut into windows of ``<start> + up to max_length-1`` text tokens whose
ends advance by ``stride`` tokens; each token is scored exactly once, in the first window where
it appears after the previous window's end (so it sees ≥ max_length-1-stride tokens of context
when the text is long enough).

token perplexity = exp(Σ NLL / Σ predicted tokens); bits per byte = Σ NLL / ln 2 / Σ UTF-8 bytes.
"""
from __future__ import annotations

import math
from typing import Sequence

from .scoring import encode, sequence_logprobs, start_token_id


def default_max_length(model, cap: int = 2048) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return int(min(n or cap, cap))


def windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, n_scored)`` over text token positions: the window holds tokens
    ``[begin, end)`` (≤ max_length-1 of them, after the start token) and scores its last
    ``n_scored``. Every token is scored once."""
    span = max_length - 1
    if span < 1 or stride < 1 or stride > span:
        raise ValueError(f"need 1 ≤ stride ≤ max_length-1 (max_length={max_length}, stride={stride})")
    if n_tokens <= span:
        return [(0, n_tokens, n_tokens)]
    out, prev_end, end = [], 0, span
    while True:
        end = min(end, n_tokens)
        out.append((max(0, end - span), end, end - prev_end))
        if end == n_tokens:
            return out
        prev_end, end = end, end + stride


def perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int | None = None,
               stride: int | None = None, progress: str | None = None) -> dict:
    """Score ``texts``; returns totals, ``ppl``, ``bpb`` and per-text ``{nll, tokens, bytes}``."""
    max_length = max_length or default_max_length(model)
    stride = stride or max(1, (max_length - 1) // 2)
    start = start_token_id(tokenizer)
    rows, owners, n_scored = [], [], []
    for t_i, text in enumerate(texts):
        ids = encode(tokenizer, text, start=False)
        if not ids:
            continue
        for b, e, k in windows(len(ids), max_length, stride):
            rows.append([start] + ids[b:e])
            owners.append(t_i)
            n_scored.append(k)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    lps = sequence_logprobs(model, rows, batch_size=batch_size, pad_id=pad, progress=progress) if rows else []
    per = [{"nll": 0.0, "tokens": 0, "bytes": len(t.encode("utf-8"))} for t in texts]
    for lp, t_i, k in zip(lps, owners, n_scored):
        per[t_i]["nll"] += float(-lp[-k:].double().sum())
        per[t_i]["tokens"] += k
    return summarize(per) | {"per_text": per, "max_length": max_length, "stride": stride}


def summarize(per: Sequence[dict]) -> dict:
    """Corpus totals from per-text ``{nll, tokens, bytes}`` (also used by significance tests)."""
    nll = sum(p["nll"] for p in per)
    tokens = sum(p["tokens"] for p in per)
    nbytes = sum(p["bytes"] for p in per)
    return {
        "nll": nll, "tokens": tokens, "bytes": nbytes,
        "ppl": math.exp(nll / tokens) if tokens else float("nan"),
        "nll_per_token": nll / tokens if tokens else float("nan"),
        "bpb": nll / math.log(2) / nbytes if nbytes else float("nan"),
    }
