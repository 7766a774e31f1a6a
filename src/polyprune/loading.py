"""Load whatever polyprune is given: a run folder (base model + masks, + kept values), a polyprune
sparse archive, or any Hugging Face model. Sits above run folders and formats, so that the model
loader below them stays a plain ``from_pretrained``."""
from __future__ import annotations

from pathlib import Path


def load_target(target: str | Path, dtype=None, device: str | None = None):
    """``(model, tokenizer, run folder or None)``: what ``polyprune eval`` and the analyses read."""
    from .formats import is_archive, load_archive
    from .run import load_run_or_model
    if Path(str(target)).is_dir() and is_archive(target):
        model, tok = load_archive(target, dtype, device)
        return model, tok, None
    return load_run_or_model(str(target), dtype, device)


def load_model(name: str, dtype=None, device: str | None = None, tokenizer=False):
    """``pp.load_model``: ``(model, tokenizer)`` of a hub id, a local folder, ``embedded``, a run
    folder (rebuilt from its base model + masks after checking the base's hash) or a polyprune
    sparse archive (decompressed). Pass an already loaded ``tokenizer`` (or ``None``) to skip it."""
    from . import model as plain
    from .formats import is_archive, load_archive
    from .run import is_run, load_run_or_model
    if Path(str(name)).is_dir() and is_run(name):
        model, tok, _ = load_run_or_model(str(name), dtype, device)
        return model, tok
    if Path(str(name)).is_dir() and is_archive(name):
        return load_archive(name, dtype, device, tokenizer)
    return plain.load_model(name, dtype, device, tokenizer)


__all__ = ["load_model", "load_target"]
