"""polyprune: prune multilingual LLMs with language-aware calibration, measure per language."""
from __future__ import annotations

import importlib
import logging
import sys
import types

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

# The public API is imported on first use, so that `polyprune --help` does not pay for torch.
_LAZY = {
    "Calibration": "calibration", "Sample": "calibration",
    "apply_masks": "masks", "load_masks": "masks", "save_masks": "masks", "sparsity_report": "masks",
    "load_model": "loading", "prune": "prune",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``polyprune.prune`` the function once the submodule of the same name is imported
    (the import system binds the submodule on its parent)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "prune" and isinstance(value, types.ModuleType) and hasattr(value, "prune"):
            value = value.prune
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Calibration", "Sample", "UserError", "apply_masks", "load_masks", "load_model",
    "prune", "save_masks", "sparsity_report", "__version__",
]
