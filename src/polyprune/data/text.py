"""Raw monolingual text per language, for Kurz-style calibration windows.

Sources, in order of precedence:

* ``text_file``: a local ``.txt``, ``.txt.gz``, ``.jsonl`` or ``.jsonl.gz`` (records' ``text_field``);
  the path may hold ``{code}``, ``{iso1}``, ``{iso3}`` or ``{name}`` to pick a file per language;
* ``dataset``: a hub dataset id (mC4 / CulturaX style) with ``dataset_config`` (same placeholders),
  ``dataset_split`` and ``text_field``, streamed and shuffled with the seed;
* default: the FLORES-200 calibration lines of the language, one per line (works offline).

At most ``max_chars`` characters are read (files from their start).
"""
from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..languages import Language, get_language
from . import flores
from .hub import stream_field

log = logging.getLogger(__name__)

DEFAULT_MAX_CHARS = 20_000_000


@dataclass
class TextSource:
    """A text and where it came from; ``units`` maps (unit id, start char) for line/record audit."""

    text: str
    source: dict[str, Any]
    units: list[tuple[int, int]] = field(default_factory=list)


def fill(template: str, lang: Language | None) -> str:
    """Replace ``{code}``/``{iso1}``/``{iso3}``/``{name}`` placeholders by ``lang``'s values."""
    if lang is None or "{" not in template:
        return template
    return template.format(code=lang.code, iso1=lang.iso1 or lang.iso3, iso3=lang.iso3, name=lang.name)


def _join(parts: list[tuple[int, str]], sep: str, max_chars: int) -> TextSource:
    units, chunks, pos = [], [], 0
    for uid, t in parts:
        if pos >= max_chars:
            break
        units.append((uid, pos))
        chunks.append(t)
        pos += len(t) + len(sep)
    return TextSource(sep.join(chunks)[:max_chars], {}, units)


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_text_file(path: str | Path, text_field: str = "text", max_chars: int = DEFAULT_MAX_CHARS) -> TextSource:
    """Text of a local .txt / .jsonl file (optionally gzipped); jsonl records joined by a blank line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"text file {p} not found: give an existing .txt or .jsonl(.gz) file (option text_file)")
    suffixes = "".join(p.suffixes[-2:]).lower()
    try:
        with _open(p) as f:
            if ".jsonl" in suffixes or ".json" in suffixes:
                parts = []
                total = 0
                for i, line in enumerate(f):
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    if text_field not in rec:
                        raise UserError(f"{p}: record {i} has no field {text_field!r} (fields: "
                                        f"{', '.join(rec)}): set option text_field")
                    parts.append((i, str(rec[text_field])))
                    total += len(parts[-1][1])
                    if total >= max_chars:
                        break
                src = _join(parts, "\n\n", max_chars)
            else:
                src = TextSource(f.read(max_chars), {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read text file {p} ({type(e).__name__}): give UTF-8 .txt or .jsonl(.gz)") from None
    if not src.text.strip():
        raise UserError(f"text file {p} has no text: give a file with text")
    src.source = {"dataset": "file", "file": str(p)}
    return src


def read_hub_text(dataset: str, config: str | None, split: str, text_field: str, seed: int,
                  max_chars: int) -> TextSource:
    """Documents streamed from a hub dataset (shuffled with ``seed``) until ``max_chars``."""
    docs = stream_field(dataset, config, split, text_field, seed=seed, max_chars=max_chars,
                        hint="give option text_file for a local file")
    parts = list(enumerate(docs))
    src = _join(parts, "\n\n", max_chars)
    if not src.text.strip():
        raise UserError(f"dataset {dataset} [{config}, {split}] gave no text")
    src.source = {"dataset": dataset, "config": config, "split": split, "seed": seed}
    return src


def load_text(lang: str | Language | None, data_dir: str | Path | None = None, text_file: str | None = None,
              text_field: str = "text", dataset: str | None = None, dataset_config: str | None = None,
              dataset_split: str = "train", seed: int = 0, max_chars: int | None = None) -> TextSource:
    """Raw text of ``lang`` from a local file, a hub dataset, or FLORES calibration lines (default)."""
    language = get_language(lang) if lang is not None else None
    max_chars = int(max_chars or DEFAULT_MAX_CHARS)
    if text_file:
        return read_text_file(fill(text_file, language), text_field, max_chars)
    if dataset:
        return read_hub_text(dataset, fill(dataset_config, language) if dataset_config else None,
                             dataset_split, text_field, seed, max_chars)
    if language is None:
        raise UserError("text calibration needs a language (--lang CODE) or option text_file")
    src = _join(flores.load_flores(language, "calibration", data_dir), "\n", max_chars)
    src.source = {"dataset": flores.source_name("calibration", data_dir)}
    return src


def units_in(units: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Ids of the units (lines, records) overlapping characters ``[start, end)``."""
    import bisect
    if not units:
        return []
    starts = [s for _, s in units]
    lo = max(bisect.bisect_right(starts, start) - 1, 0)
    hi = bisect.bisect_left(starts, end)
    return [units[i][0] for i in range(lo, max(hi, lo + 1))]


__all__ = ["DEFAULT_MAX_CHARS", "TextSource", "fill", "load_text", "read_hub_text", "read_text_file", "units_in"]
