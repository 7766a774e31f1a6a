"""LRP2 — language representation projection (Xu et al. 2023), as the baseline of Kim et al.

Mean language vectors μ_L^i are the average output of decoder layer i over the content tokens
(every token except the start token and pads) of monolingual calibration sentences — the same
FLORES calibration lines as the pruning recipes. While a model runs on language L:

* after layer ``a``: h ← h − μ_L^a + μ_en^a  (into the English representation space),
* after layer ``b``: h ← h − μ_en^b + μ_L^b  (back to language L),

applied to content tokens only, through forward hooks (also during cached generation).
``(a, b)`` is chosen by :func:`search_layers` on XNLI dev accuracy (Kim et al.: per language).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Sequence

import torch

from ..model import find_layers
from .scoring import encode, model_device

log = logging.getLogger(__name__)


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_hidden(output, h):
    if isinstance(output, tuple):
        return (h,) + tuple(output[1:])
    if isinstance(output, list):
        return [h] + list(output[1:])
    return h


def _special_ids(tokenizer) -> list[int]:
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    ids |= set(getattr(tokenizer, "all_special_ids", []) or [])
    return sorted(i for i in ids if i is not None)


@contextmanager
def _content_mask(model, tokenizer):
    """Tracks, for every forward call of ``model``, which input positions are content tokens."""
    special = torch.tensor(_special_ids(tokenizer), dtype=torch.long)
    state: dict = {}

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        state["mask"] = None if ids is None else ~torch.isin(ids, special.to(ids.device))

    h = model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield state
    finally:
        h.remove()


@torch.no_grad()
def language_means(model, tokenizer, texts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """μ^i for every decoder layer i: ``[n_layers, hidden]`` fp32, mean over content tokens."""
    _, layers = find_layers(model)
    dev = model_device(model)
    sums: list[torch.Tensor | None] = [None] * len(layers)
    count = torch.zeros((), dtype=torch.float64)
    handles = []
    with _content_mask(model, tokenizer) as state:
        def make(i):
            def hook(module, args, output):
                h = _hidden(output).float()
                m = state["mask"].to(h.device).unsqueeze(-1).float()
                s = (h * m).sum(dim=(0, 1)).double().cpu()
                sums[i] = s if sums[i] is None else sums[i] + s
            return hook
        handles = [layer.register_forward_hook(make(i)) for i, layer in enumerate(layers)]
        try:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            for s in range(0, len(texts), batch_size):
                rows = [encode(tokenizer, t) for t in texts[s:s + batch_size]]
                n = max(len(r) for r in rows)
                ids = torch.full((len(rows), n), pad, dtype=torch.long)
                att = torch.zeros_like(ids)
                for j, r in enumerate(rows):
                    ids[j, :len(r)] = torch.as_tensor(r)
                    att[j, :len(r)] = 1
                model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False)
                count += float(((~torch.isin(ids, torch.tensor(_special_ids(tokenizer)))) & att.bool()).sum())
        finally:
            for h in handles:
                h.remove()
    return torch.stack([(x / count).float() for x in sums])


@contextmanager
def projected(model, tokenizer, mu_lang: torch.Tensor, mu_en: torch.Tensor, a: int, b: int):
    """Apply LRP2 with layers ``(a, b)`` while the context is open."""
    _, layers = find_layers(model)
    n = len(layers)
    if not (0 <= a < b < n):
        raise ValueError(f"LRP2 needs 0 <= a < b < {n} (got a={a}, b={b})")
    shifts = {a: (mu_en[a] - mu_lang[a]), b: (mu_lang[b] - mu_en[b])}
    with _content_mask(model, tokenizer) as state:
        def make(delta):
            def hook(module, args, output):
                h = _hidden(output)
                m = state["mask"]
                if m is None:
                    return output
                d = delta.to(device=h.device, dtype=h.dtype)
                return _replace_hidden(output, h + m.to(h.device).unsqueeze(-1).to(h.dtype) * d)
            return hook
        handles = [layers[i].register_forward_hook(make(d)) for i, d in shifts.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def search_layers(model, tokenizer, mu_lang: torch.Tensor, mu_en: torch.Tensor, dev_items: Sequence[dict],
                  pairs: Sequence[tuple[int, int]] | None = None, norm: str = "sum",
                  batch_size: int = 16) -> tuple[tuple[int, int], dict[str, float]]:
    """Best ``(a, b)`` by XNLI dev accuracy (ties: the first pair in order); also every pair's accuracy."""
    from .cloze import XNLI_TEMPLATE, classify
    n = mu_lang.shape[0]
    pairs = list(pairs) if pairs else [(a, b) for a in range(n) for b in range(a + 1, n)]
    accs: dict[str, float] = {}
    best, best_acc = pairs[0], -1.0
    for a, b in pairs:
        with projected(model, tokenizer, mu_lang, mu_en, a, b):
            res = classify(model, tokenizer, dev_items, XNLI_TEMPLATE, norm, batch_size)
        acc = sum(r["pred"] == it["label"] for r, it in zip(res, dev_items)) / len(dev_items)
        accs[f"{a},{b}"] = acc
        if acc > best_acc:
            best, best_acc = (a, b), acc
    return best, accs
