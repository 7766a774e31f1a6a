"""Hugging Face model cards (README.md) for exported runs."""
from __future__ import annotations

from pathlib import Path


def write_card(path: Path, run: Path, cfg, fmt: str, report: dict) -> None:
    Path(path).write_text(f"---\nbase_model: {cfg.model}\nlibrary_name: polyprune\n---\n", encoding="utf-8")
