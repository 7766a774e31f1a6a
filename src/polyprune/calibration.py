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
from typing import Any, Callable

import torch

from .errors import UserError
from .registry import Registry

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


def window_samples(tokenizer, text: str, nsamples: int, seqlen: int, rng: random.Random,
                   langs: tuple[str, ...], source: dict, units: list[tuple[int, int]] | None = None,
                   what: str = "calibration text") -> list[Sample]:
    """``nsamples`` windows of exactly ``seqlen`` tokens at seeded offsets (Wanda's loader), each
    starting with the tokenizer's special prefix (e.g. <bos>); ``units`` (id, start char) give the
    line/record ids a window covers."""
    from .data.text import units_in
    from .prompts import special_prefix
    prefix = special_prefix(tokenizer)
    body = seqlen - len(prefix)
    if body <= 0:
        raise UserError(f"--seqlen {seqlen} leaves no room for text after the special tokens")
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=bool(units))
    except (NotImplementedError, ValueError):  # slow tokenizers have no offsets: no line ids then
        units = None
        enc = tokenizer(text, add_special_tokens=False)
    ids = enc["input_ids"]
    n = len(ids)
    if n <= body:
        raise UserError(f"{what} has {n} tokens, not more than the {body} a window needs: "
                        f"give more text or a smaller --seqlen")
    out = []
    for _ in range(nsamples):
        i = rng.randint(0, n - body - 1)
        window = ids[i:i + body]
        src = {**source, "token_offset": i}
        if units:
            offs = enc["offset_mapping"]
            src["lines"] = units_in(units, offs[i][0], offs[i + body - 1][1])
        t = torch.tensor(prefix + window, dtype=torch.long)
        out.append(Sample(t, torch.ones_like(t), langs, text=tokenizer.decode(window), source=src))
    return out


def from_text_file(path: str | Path, tokenizer, nsamples: int, seqlen: int, seed: int = 0,
                   langs: tuple[str, ...] = ()) -> Calibration:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets of a plain text file
    (Wanda's loader), each starting with the tokenizer's special prefix (e.g. Gemma's <bos>)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--calibration-file {p} does not exist: give a readable text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--calibration-file {p} is not UTF-8 text (byte {e.start}): convert it, e.g. "
                        f"iconv -t UTF-8") from None
    if not text.strip():
        raise UserError(f"--calibration-file {p} is empty: give a file with text")
    samples = window_samples(tokenizer, text, nsamples, seqlen, random.Random(seed), tuple(langs),
                             {"file": str(p)}, what=f"--calibration-file {p}")
    return Calibration(samples, "file", {"file": str(p), "nsamples": nsamples, "seqlen": seqlen, "seed": seed})


# name -> builder(tokenizer, **config) -> Calibration; the recipes of polyprune.calibrations register here.
RECIPES: Registry[Callable[..., Calibration]] = Registry("calibration recipe", "polyprune.calibrations")


def register_recipe(name: str):
    def deco(fn):
        return RECIPES.register(name, fn)
    return deco


def build_calibration(name: str, tokenizer, **options) -> Calibration:
    """Build calibration samples with recipe ``name`` (see ``RECIPES``)."""
    return RECIPES.resolve(name)(tokenizer, **options)
