"""Helpers shared by the calibration recipes: option checks, tokenization with the tokenizer's own
special tokens, and seeded token windows."""
from __future__ import annotations

import logging
import random
from typing import Any

import torch

from ..calibration import Sample, window_samples  # noqa: F401  (re-exported for the recipes)
from ..errors import UserError
from ..options import fill, options_model

log = logging.getLogger(__name__)

DEFAULT_SEQLEN = 512


def check_options(recipe: str, options: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """``options`` merged over ``allowed`` defaults (the options model every registry entry uses,
    :func:`polyprune.options.fill`); an unknown key is bad input."""
    return fill("calibration recipe", recipe, options_model(recipe, allowed), options)


def rng_for(seed: int, *parts: str) -> random.Random:
    """A seeded generator per (seed, recipe, language): languages never share a stream."""
    return random.Random(":".join([str(seed), *parts]))


def positive(name: str, value: int | None, default: int) -> int:
    v = default if value is None else int(value)
    if v <= 0:
        raise UserError(f"--{name} must be positive, got {v}")
    return v


def encode(tokenizer, text: str, seqlen: int) -> tuple[torch.Tensor, bool]:
    """Token ids of ``text`` with the tokenizer's special tokens (e.g. Gemma's <bos>), cut to ``seqlen``."""
    ids = list(tokenizer(text)["input_ids"])
    truncated = len(ids) > seqlen
    return torch.tensor(ids[:seqlen], dtype=torch.long), truncated


def demo_sample(tokenizer, text: str, seqlen: int, langs: tuple[str, ...], source: dict) -> Sample:
    """One variable-length demonstration sample (no padding), cut to ``seqlen`` tokens."""
    ids, truncated = encode(tokenizer, text, seqlen)
    if truncated:
        source = {**source, "truncated_to": seqlen}
        log.debug("calibration sample cut to %d tokens", seqlen)
    return Sample(ids, torch.ones_like(ids), langs, text=text, source=source)


def truncate(sample: Sample, n_tokens: int) -> Sample:
    """The first ``n_tokens`` tokens of ``sample`` (a new Sample; source notes the cut)."""
    ids = sample.input_ids[:n_tokens]
    am = None if sample.attention_mask is None else sample.attention_mask[:n_tokens]
    return Sample(ids, am, sample.langs, sample.set, sample.text, {**sample.source, "truncated_to": n_tokens})
