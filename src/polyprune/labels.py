"""Short labels of a run (model, method, sparsity or pattern, calibration, seed), one scheme for
grid cells, report rows and analyses, so a run is called the same everywhere.

A calibration is ``recipe:langs`` with languages by their short code (``text:eng``,
``mix:deu+eng``, ``translation:fra>eng`` for a target language, ``file:eng`` for a calibration
file); without data it is :data:`NONE`. Grid folder names are built from these labels: changing
one renames every cell folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig

NONE = "-"  # a label that does not apply (a dense baseline's sparsity, a data-free run's calibration)
KEYS = ("model", "method", "sparsity", "calibration", "seed")


def short_model(name: str) -> str:
    """A hub id or a folder by its last part (``google/gemma-3-270m`` → ``gemma-3-270m``)."""
    return Path(str(name).rstrip("/")).name or str(name)


def fmt_sparsity(s: float) -> str:
    return f"{s:g}"


def sparsity_label(pattern: str | None, sparsity: float) -> str:
    """An N:M pattern as itself, an unstructured fraction as a plain number (``0.5``)."""
    return pattern if pattern not in (None, "unstructured") else fmt_sparsity(float(sparsity))


def calibration_label(c: dict) -> str:
    """``recipe:langs`` of a calibration mapping (a RunConfig's ``calibration`` or a grid axis entry)."""
    langs = c.get("langs") or []
    langs = [langs] if isinstance(langs, str) else list(langs)
    lab = "+".join(str(x).split("_")[0] for x in langs)
    if c.get("target_lang"):
        lab += f">{str(c['target_lang']).split('_')[0]}"
    recipe = c.get("recipe") or ("file" if c.get("file") else "")
    return f"{recipe}:{lab}" if lab else (recipe or NONE)


def run_labels(cfg: RunConfig | dict[str, Any]) -> dict[str, str]:
    """The labels of one pruned run, from its config (a RunConfig or the mapping of its config.yaml)."""
    c = cfg.model_dump(mode="json") if isinstance(cfg, RunConfig) else dict(cfg or {})
    cal = c.get("calibration") or {}
    return {"model": short_model(c.get("model", "?")), "method": c.get("method", "?"),
            "sparsity": sparsity_label(c.get("pattern", "unstructured"), c.get("sparsity", 0.5)),
            "calibration": calibration_label(cal) if (cal.get("recipe") or cal.get("file")) else NONE,
            "seed": str(c.get("seed", 0))}


def dense_labels(model: str) -> dict[str, str]:
    """The labels of an unpruned baseline of ``model``."""
    return {"model": short_model(model), "method": "dense", "sparsity": NONE, "calibration": NONE, "seed": NONE}
