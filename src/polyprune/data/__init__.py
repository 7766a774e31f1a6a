"""Dataset sources (FLORES-200, raw text, code): a local folder laid out like ``../shared/data``
when one is given (``--data-dir`` or ``POLYPRUNE_DATA_DIR``), else the Hugging Face hub."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

ENV_VAR = "POLYPRUNE_DATA_DIR"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The local data folder: ``data_dir``, else ``$POLYPRUNE_DATA_DIR``, else ``None`` (use the hub)."""
    raw = data_dir if data_dir not in (None, "") else os.environ.get(ENV_VAR) or None
    if raw is None:
        return None
    p = Path(raw).expanduser()
    if not p.is_dir():
        where = "--data-dir" if data_dir not in (None, "") else f"${ENV_VAR}"
        raise UserError(f"{where} {p} is not a folder: give the local data folder (layout as ../shared/data) "
                        f"or unset it to use the hub")
    return p


__all__ = ["ENV_VAR", "resolve_data_dir"]
