"""Calibration samples: the token sequences whose activations decide what is pruned.

A :class:`Calibration` is a list of :class:`Sample` (1-D token ids, optional attention mask,
language tags, the name of the calibration *set* it belongs to, and its source text/line ids).
Recipes (``RECIPES``) build calibrations from data sources; the engine only sees samples.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .errors import UserError

DEFAULT_SET = "target"


@dataclass
class Sample:
    """One calibration sequence. ``attention_mask`` 0 marks pads (never counted in statistics)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    langs: tuple[str, ...] = ()
    set: str = DEFAULT_SET
    text: str | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_ids = torch.as_tensor(self.input_ids, dtype=torch.long).reshape(-1)
        if self.attention_mask is not None:
            self.attention_mask = torch.as_tensor(self.attention_mask, dtype=torch.long).reshape(-1)
            if self.attention_mask.shape != self.input_ids.shape:
                raise UserError("calibration sample: attention_mask and input_ids differ in length")
        if isinstance(self.langs, str):
            self.langs = (self.langs,)
        self.langs = tuple(self.langs)

    @property
    def n_tokens(self) -> int:
        """Real (non-pad) tokens."""
        if self.attention_mask is None:
            return int(self.input_ids.numel())
        return int(self.attention_mask.sum())


@dataclass
class Calibration:
    """An ordered list of samples, possibly from several named sets (e.g. target, contrast)."""

    samples: list[Sample]
    recipe: str = "tokens"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    @property
    def sets(self) -> list[str]:
        return sorted({s.set for s in self.samples})

    def subset(self, name: str) -> "Calibration":
        return Calibration([s for s in self.samples if s.set == name], self.recipe, dict(self.meta))

    def __add__(self, other: "Calibration") -> "Calibration":
        return Calibration(self.samples + other.samples, f"{self.recipe}+{other.recipe}",
                           {**self.meta, **other.meta})

    def with_set(self, name: str) -> "Calibration":
        """The same samples, relabelled as calibration set ``name``."""
        for s in self.samples:
            s.set = name
        return self

    def token_counts(self) -> dict[str, dict[str, int]]:
        """Real tokens per set and per language tag (a multilingual sample counts for each tag)."""
        out: dict[str, dict[str, int]] = {}
        for s in self.samples:
            per = out.setdefault(s.set, {})
            for lang in s.langs or ("und",):
                per[lang] = per.get(lang, 0) + s.n_tokens
        return out

    def write_jsonl(self, path: Path, tokenizer=None) -> None:
        """Audit file: exact text, language tags and source ids of every sample."""
        with open(path, "w", encoding="utf-8") as f:
            for i, s in enumerate(self.samples):
                text = s.text
                if text is None and tokenizer is not None:
                    ids = s.input_ids if s.attention_mask is None else s.input_ids[s.attention_mask.bool()]
                    text = tokenizer.decode(ids.tolist())
                rec = {"index": i, "set": s.set, "langs": list(s.langs), "n_tokens": s.n_tokens,
                       "text": text, "source": s.source}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def as_calibration(obj: Any) -> Calibration:
    """Accept a Calibration, a LongTensor [n, L], or a list of dicts {input_ids, attention_mask}."""
    if isinstance(obj, Calibration):
        cal = obj
    elif isinstance(obj, torch.Tensor):
        t = obj if obj.dim() == 2 else obj.reshape(1, -1)
        cal = Calibration([Sample(row) for row in t])
    elif isinstance(obj, (list, tuple)):
        samples = []
        for item in obj:
            if isinstance(item, Sample):
                samples.append(item)
            elif isinstance(item, dict):
                ids = torch.as_tensor(item["input_ids"])
                am = item.get("attention_mask")
                am = None if am is None else torch.as_tensor(am)
                if ids.dim() == 2:  # a padded batch
                    for r in range(ids.shape[0]):
                        samples.append(Sample(ids[r], None if am is None else am[r],
                                              tuple(item.get("langs", ())), item.get("set", DEFAULT_SET)))
                else:
                    samples.append(Sample(ids, am, tuple(item.get("langs", ())), item.get("set", DEFAULT_SET)))
            else:
                samples.append(Sample(torch.as_tensor(item)))
        cal = Calibration(samples)
    else:
        raise UserError(f"calibration: expected a Calibration, a LongTensor [n, L] or a list of dicts, "
                        f"got {type(obj).__name__}")
    if not cal.samples or all(s.n_tokens == 0 for s in cal.samples):
        raise UserError("calibration is empty: give at least one sample with tokens")
    return cal


def text_windows(token_ids: torch.Tensor, nsamples: int, seqlen: int, seed: int,
                 langs: tuple[str, ...] = (), source: dict | None = None, set_name: str = DEFAULT_SET,
                 what: str = "calibration text") -> list[Sample]:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets (Wanda's loader)."""
    n = int(token_ids.numel())
    if n <= seqlen:
        raise UserError(f"{what} has {n} tokens, fewer than --seqlen {seqlen} + 1: "
                        f"give more text or a smaller --seqlen")
    rng = random.Random(seed)
    out = []
    for _ in range(nsamples):
        i = rng.randint(0, n - seqlen - 1)
        out.append(Sample(token_ids[i:i + seqlen].clone(), None, langs, set_name,
                          source={**(source or {}), "token_offset": i}))
    return out


def from_text_file(path: str | Path, tokenizer, nsamples: int, seqlen: int, seed: int = 0,
                   langs: tuple[str, ...] = ()) -> Calibration:
    """Windows of a plain text file, tokenized once as a whole."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--calibration-file {p} does not exist: give a readable text file")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise UserError(f"--calibration-file {p} is empty: give a file with text")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    samples = text_windows(ids, nsamples, seqlen, seed, langs, {"file": str(p)}, what=f"--calibration-file {p}")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False):
        for s in samples:  # models such as Gemma need <bos> first
            s.input_ids = torch.cat([torch.tensor([bos]), s.input_ids[:-1]])
    cal = Calibration(samples, "file", {"file": str(p), "nsamples": nsamples, "seqlen": seqlen, "seed": seed})
    for s in cal.samples:
        s.text = None
    return cal


# name -> builder(tokenizer, config: dict) -> Calibration. Language-aware recipes register here.
RECIPES: dict[str, Callable[..., Calibration]] = {}


def register_recipe(name: str):
    def deco(fn):
        RECIPES[name] = fn
        return fn
    return deco


def build_calibration(name: str, tokenizer, **options) -> Calibration:
    """Build calibration samples with recipe ``name`` (see ``RECIPES``)."""
    from . import calibrations as _  # noqa: F401  (registers the language-aware recipes)
    if name not in RECIPES:
        raise UserError(f"unknown calibration recipe {name!r}: choose one of {', '.join(sorted(RECIPES))}")
    return RECIPES[name](tokenizer, **options)


def iter_real_tokens(samples: Iterable[Sample]) -> int:
    return sum(s.n_tokens for s in samples)
