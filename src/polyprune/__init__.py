"""polyprune: prune multilingual LLMs with language-aware calibration, measure per language."""
from __future__ import annotations

import logging

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .calibration import Calibration, Sample  # noqa: E402
from .masks import apply_masks, load_masks, save_masks, sparsity_report  # noqa: E402
from .model import load_model  # noqa: E402
from .prune import prune  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Calibration", "Sample", "UserError", "apply_masks", "load_masks", "load_model",
    "prune", "save_masks", "sparsity_report", "__version__",
]
