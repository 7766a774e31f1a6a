"""Token log-likelihoods of whole sequences, batched, with shared-prefix reuse.

Conventions (shared by perplexity and cloze scoring): a text is encoded without the tokenizer's
special tokens and a start token is prepended — ``<bos>`` if the tokenizer has one, else
``<eos>`` (GPT-2 style); this is also what lm-eval does for an empty context. Every token after
the start token is predicted; nothing is appended. Log-probabilities are computed in fp32 as
``logit[target] - logsumexp(logits)``.
"""
from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch

from ..errors import UserError

log = logging.getLogger(__name__)


def start_token_id(tokenizer) -> int:
    """``<bos>``, else ``<eos>``; a tokenizer with neither cannot condition a first token."""
    if tokenizer is None:
        raise UserError("the model has no tokenizer: evaluation needs one (save it with the model)")
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise UserError("the tokenizer has neither a bos nor an eos token: set one (tokenizer.eos_token = ...)")


def encode(tokenizer, text: str, start: bool = True) -> list[int]:
    """Token ids of ``text`` without special tokens, with the start token prepended."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [start_token_id(tokenizer)] + ids if start else ids


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, fp32: logits [B, L, V], targets [B, L] → [B, L]."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def batches_by_length(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), ≤ batch_size rows and
    ≤ max_tokens padded tokens per batch."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= batch_size or (max_tokens and (len(cur) + 1) * width > max_tokens)):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


@torch.no_grad()
def sequence_logprobs(model, seqs: Sequence[Sequence[int]], batch_size: int = 8, pad_id: int = 0,
                      max_tokens: int | None = 16384, progress: str | None = None) -> list[torch.Tensor]:
    """Per sequence, the log-probabilities (fp32, CPU) of tokens 1..n-1 given the tokens before.

    Right-padded batches sorted by length (padding after the last real token never changes the
    real positions of a causal model)."""
    from ..progress import track
    if any(len(s) < 2 for s in seqs):
        raise UserError("a sequence to score has fewer than 2 tokens (start token + at least one)")
    dev = model_device(model)
    out: list[torch.Tensor | None] = [None] * len(seqs)
    groups = batches_by_length([len(s) for s in seqs], batch_size, max_tokens)
    it = track(groups, progress) if progress else groups
    for idx in it:
        ids, mask = _pad_right([seqs[i] for i in idx], pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        lp = _token_logprobs(logits[:, :-1], ids[:, 1:]).cpu()
        for row, i in enumerate(idx):
            out[i] = lp[row, :len(seqs[i]) - 1]
    return out  # type: ignore[return-value]


def cache_kwargs(model, cache) -> dict:
    """The KV-cache keyword of this transformers version (``cache``, formerly ``past_key_values``)."""
    import inspect
    params = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def output_cache(res):
    c = res.get("cache")
    return c if c is not None else res.get("past_key_values")


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for j in range(n):
        if any(s[j] != first[j] for s in seqs[1:]):
            return j
    return n


@torch.no_grad()
def grouped_logprobs(model, seqs: Sequence[Sequence[int]], groups: Sequence[Sequence[int]],
                     batch_size: int = 16, pad_id: int = 0, progress: str | None = None) -> list[torch.Tensor]:
    """Like :func:`sequence_logprobs`, but each group of sequences (indices into ``seqs``) runs
    its longest common token prefix once, then all continuations from a copy of its KV cache.

    Exactly the same numbers as scoring each sequence alone (up to float summation order)."""
    from ..progress import track
    dev = model_device(model)
    out: list[torch.Tensor | None] = [None] * len(seqs)
    it = track(groups, progress) if progress else groups
    for group in it:
        group = list(group)
        rows = [list(seqs[i]) for i in group]
        if any(len(r) < 2 for r in rows):
            raise UserError("a sequence to score has fewer than 2 tokens (start token + at least one)")
        p = min(common_prefix_len(rows), min(len(r) for r in rows) - 1)
        if p < 2 or len(rows) == 1:  # nothing worth sharing
            for i, lp in zip(group, sequence_logprobs(model, rows, batch_size, pad_id, max_tokens=None)):
                out[i] = lp
            continue
        prefix = torch.as_tensor(rows[0][:p], dtype=torch.long, device=dev)[None]
        res = model(input_ids=prefix, use_cache=True)
        pre_logits, cache = res.logits[0], output_cache(res)
        pre_lp = _token_logprobs(pre_logits[None, :-1], prefix[:, 1:])[0].cpu()  # tokens 1..p-1
        last = pre_logits[-1].float()
        last_lse = torch.logsumexp(last, -1)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            conts = [r[p:] for r in chunk]
            ids, mask = _pad_right(conts, pad_id)
            ids, mask = ids.to(dev), mask.to(dev)
            c = copy.deepcopy(cache) if start + batch_size < len(rows) else cache
            c.batch_repeat_interleave(len(chunk))
            full_mask = torch.cat([torch.ones((len(chunk), p), dtype=torch.long, device=dev), mask], 1)
            logits = model(input_ids=ids, attention_mask=full_mask, use_cache=True, **cache_kwargs(model, c)).logits
            first = (last[ids[:, 0]] - last_lse).cpu()  # the first continuation token, from the prefix
            rest = _token_logprobs(logits[:, :-1], ids[:, 1:]).cpu()
            for row, gi in enumerate(range(start, start + len(chunk))):
                n = len(conts[row])
                out[group[gi]] = torch.cat([pre_lp, first[row:row + 1], rest[row, :n - 1]])
    return out  # type: ignore[return-value]
