"""MARC (binary sentiment, test split) from a local data folder: ``<data_dir>/marc/<code>.jsonl.gz``.

Rows are sorted by stars (all negatives first): evaluate a seeded sample, never a head slice.
``label`` is 0 negative (1–2 stars) or 1 positive (4–5 stars); ``id`` is the row number.
Academic evaluation only (Amazon's licence): never copy these files into a repository.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from ..errors import UserError
from ..languages import Language, get_language
from . import resolve_data_dir

LABELS = ("negative", "positive")


def marc_code(lang: str | Language) -> str:
    language = get_language(lang)
    if not language.marc:
        raise UserError(f"{language.name} ({language.code}) is not a MARC language: choose one of en de es fr ja zh")
    return language.marc


def marc_path(lang: str | Language, data_dir: str | Path) -> Path:
    return Path(data_dir) / "marc" / f"{marc_code(lang)}.jsonl.gz"


@lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> tuple[dict, ...]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def load_marc(lang: str | Language, data_dir: str | Path | None = None) -> list[dict]:
    """``[{id, text, stars, label}]`` (label 0 negative, 1 positive) in file order."""
    marc_code(lang)  # an unknown language or one MARC lacks fails here
    d = resolve_data_dir(data_dir)
    if d is None:
        raise UserError("MARC is no longer distributed on the hub: give --data-dir with marc/<code>.jsonl.gz")
    path = marc_path(lang, d)
    if not path.is_file():
        raise UserError(f"no local MARC data for {get_language(lang).name}: {path} not found")
    out = []
    for i, r in enumerate(_read(str(path), path.stat().st_mtime)):
        label = r["label"]
        label = LABELS.index(label) if isinstance(label, str) else int(label)
        out.append({"id": i, "text": r["text"], "stars": int(r.get("stars", 0)), "label": label})
    return out


__all__ = ["LABELS", "load_marc", "marc_code", "marc_path"]
