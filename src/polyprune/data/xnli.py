"""XNLI (test / dev) from a local data folder: ``<data_dir>/xnli/<split>/<xnli code>.jsonl.gz``.

Rows keep the original order (3 hypotheses per premise), so row i is the same pair in every
language; ``id`` is that row number. Labels: 0 entailment, 1 neutral, 2 contradiction.
Without a data folder the hub's ``facebook/xnli`` is used.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from ..errors import UserError
from ..languages import Language, get_language
from . import resolve_data_dir

SPLITS = ("test", "dev")
LABELS = ("entailment", "neutral", "contradiction")
HUB_DATASET = "facebook/xnli"


def xnli_code(lang: str | Language) -> str:
    language = get_language(lang)
    if not language.xnli:
        raise UserError(f"{language.name} ({language.code}) is not an XNLI language: choose one of "
                        f"ar bg de el en es fr hi ru sw th tr ur vi zh")
    return language.xnli


def xnli_path(lang: str | Language, split: str, data_dir: str | Path) -> Path:
    return Path(data_dir) / "xnli" / split / f"{xnli_code(lang)}.jsonl.gz"


@lru_cache(maxsize=32)
def _read(path: str, mtime: float) -> tuple[dict, ...]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def _hub(code: str, split: str) -> tuple[dict, ...]:
    from .hub import require_hub
    require_hub(f"XNLI ({HUB_DATASET})", f"give --data-dir (or POLYPRUNE_DATA_DIR) with xnli/{split}/{code}.jsonl.gz")
    try:
        from datasets import load_dataset
        ds = load_dataset(HUB_DATASET, code, split={"test": "test", "dev": "validation"}[split])
    except Exception as e:
        raise UserError(f"could not load {HUB_DATASET} [{code}] from the hub ({type(e).__name__}); "
                        f"give --data-dir with xnli/{split}/{code}.jsonl.gz") from None
    return tuple({"premise": r["premise"], "hypothesis": r["hypothesis"], "label": r["label"]} for r in ds)


def load_xnli(lang: str | Language, split: str = "test", data_dir: str | Path | None = None) -> list[dict]:
    """``[{id, premise, hypothesis, label}]`` in the original row order."""
    if split not in SPLITS:
        raise UserError(f"unknown XNLI split {split!r}: choose one of {', '.join(SPLITS)}")
    code = xnli_code(lang)
    d = resolve_data_dir(data_dir)
    if d is None:
        rows = _hub(code, split)
    else:
        path = xnli_path(lang, split, d)
        if not path.is_file():
            raise UserError(f"no local XNLI {split} data for {get_language(lang).name}: {path} not found")
        rows = _read(str(path), path.stat().st_mtime)
    return [{"id": i, "premise": r["premise"], "hypothesis": r["hypothesis"], "label": int(r["label"])}
            for i, r in enumerate(rows)]


__all__ = ["LABELS", "SPLITS", "load_xnli", "xnli_code", "xnli_path"]
