"""FLORES-200 parallel sentences, with calibration and evaluation lines kept apart.

Offline (a data folder): ``<data_dir>/flores200/devtest/<code>.txt``, 1012 line-aligned sentences.
There is no dev split there, so devtest is split once, here:

* lines ``0 … CALIBRATION_START-1`` are **evaluation** lines (perplexity, translation tests);
* lines ``CALIBRATION_START …`` are **calibration** lines (demonstrations, calibration text).

Online (no data folder): the hub's FLORES+ (``openlanguagedata/flores_plus``): its ``dev`` split
for calibration, its ``devtest`` split (first ``CALIBRATION_START`` rows) for evaluation.
Line ids are row numbers within the file / split they come from; line i of every language
translates line i of English.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable

from ..errors import UserError
from ..languages import Language, get_language
from . import resolve_data_dir

CALIBRATION_START = 500  # devtest lines >= this are calibration, lines < this are evaluation
SPLITS = ("calibration", "evaluation")
HUB_DATASET = "openlanguagedata/flores_plus"
HUB_SPLIT = {"calibration": "dev", "evaluation": "devtest"}
LOCAL_HINT = "give --data-dir (or POLYPRUNE_DATA_DIR) with flores200/devtest/<code>.txt, e.g. ../shared/data"


def flores_path(lang: str | Language, data_dir: str | Path) -> Path:
    """Where the local devtest file of ``lang`` is looked for."""
    return Path(data_dir) / "flores200" / "devtest" / f"{get_language(lang).code}.txt"


def available_languages(data_dir: str | Path | None) -> list[str]:
    """FLORES codes with a local devtest file (empty without a data folder)."""
    d = resolve_data_dir(data_dir)
    if d is None or not (d / "flores200" / "devtest").is_dir():
        return []
    return sorted(p.stem for p in (d / "flores200" / "devtest").glob("*.txt"))


@lru_cache(maxsize=64)
def _read_lines(path: str, mtime: float) -> tuple[str, ...]:
    return tuple(Path(path).read_text(encoding="utf-8").splitlines())


@lru_cache(maxsize=64)
def _hub_lines(config: str, split: str) -> tuple[str, ...]:
    from .hub import require_hub
    require_hub(f"FLORES+ ({HUB_DATASET})", LOCAL_HINT)
    try:
        from datasets import load_dataset
        ds = load_dataset(HUB_DATASET, config, split=split)
    except Exception as e:  # offline, gated dataset without a token, renamed config …
        raise UserError(f"could not load FLORES+ {HUB_DATASET} [{config}, {split}] from the hub "
                        f"({type(e).__name__}); give --data-dir with flores200/devtest/<code>.txt "
                        f"or log in with `hf auth login`") from None
    return tuple(ds["text"])


def split_ids(split: str, n_lines: int) -> range:
    """Line ids of ``split`` in a local devtest file of ``n_lines`` lines."""
    if split == "calibration":
        return range(CALIBRATION_START, n_lines)
    if split == "evaluation":
        return range(0, min(CALIBRATION_START, n_lines))
    raise UserError(f"unknown FLORES split {split!r}: choose one of {', '.join(SPLITS)}")


def source_name(split: str, data_dir: str | Path | None = None) -> str:
    """The dataset name recorded in sample sources, e.g. ``flores200/devtest``."""
    if resolve_data_dir(data_dir) is not None:
        return "flores200/devtest"
    return f"{HUB_DATASET}:{HUB_SPLIT[split]}"


def load_flores(lang: str | Language, split: str, data_dir: str | Path | None = None) -> list[tuple[int, str]]:
    """``(line id, sentence)`` pairs of ``lang`` in ``split`` ("calibration" or "evaluation")."""
    if split not in SPLITS:
        raise UserError(f"unknown FLORES split {split!r}: choose one of {', '.join(SPLITS)}")
    language = get_language(lang)
    d = resolve_data_dir(data_dir)
    if d is None:
        lines = _hub_lines(language.hub_code, HUB_SPLIT[split])
        ids = range(len(lines)) if split == "calibration" else range(min(CALIBRATION_START, len(lines)))
    else:
        path = flores_path(language, d)
        if not path.is_file():
            raise UserError(f"{language.name} ({language.code}) is not in the local data: {path} not found; "
                            f"run `polyprune data languages` to list what is available")
        lines = _read_lines(str(path), path.stat().st_mtime)
        ids = split_ids(split, len(lines))
        if split == "calibration":
            check_disjoint(ids, split_ids("evaluation", len(lines)))
    return [(i, lines[i]) for i in ids]


def load_parallel(src: str | Language, tgt: str | Language, split: str,
                  data_dir: str | Path | None = None) -> list[tuple[int, str, str]]:
    """Aligned ``(line id, source sentence, target sentence)`` triples."""
    a = dict(load_flores(src, split, data_dir))
    b = dict(load_flores(tgt, split, data_dir))
    return [(i, a[i], b[i]) for i in sorted(a.keys() & b.keys())]


def check_disjoint(calib_ids: Iterable[int], eval_ids: Iterable[int]) -> None:
    """Raise if any line is used both for calibration and for evaluation."""
    both = sorted(set(calib_ids) & set(eval_ids))
    if both:
        shown = ", ".join(map(str, both[:5])) + (" …" if len(both) > 5 else "")
        raise UserError(f"{len(both)} FLORES line(s) used for both calibration and evaluation ({shown}): "
                        f"calibrate on lines >= {CALIBRATION_START} and evaluate on lines < {CALIBRATION_START}")


__all__ = ["CALIBRATION_START", "HUB_DATASET", "SPLITS", "available_languages", "check_disjoint",
           "flores_path", "load_flores", "load_parallel", "source_name", "split_ids"]
