"""polyprune: prune multilingual LLMs with language-aware calibration, measure per language."""
from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

# The public API is imported on first use, so that `polyprune --help` does not pay for torch.
_LAZY = {
    "Calibration": "calibration", "Sample": "calibration",
    "apply_masks": "masks", "load_masks": "masks", "save_masks": "masks", "sparsity_report": "masks",
    "load_model": "loading", "prune": "engine", "PruneResult": "result",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Calibration", "PruneResult", "Sample", "UserError", "apply_masks", "load_masks", "load_model",
    "prune", "save_masks", "sparsity_report", "__version__",
]
