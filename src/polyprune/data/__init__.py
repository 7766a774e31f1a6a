"""Dataset sources (FLORES-200, XNLI, MARC, raw text, code) and the one rule that picks them.

Every command resolves its data folder the same way (:func:`resolve_data_dir`):

1. ``--data-dir DIR``;
2. else ``$POLYPRUNE_DATA_DIR``;
3. else the first local folder laid out like ``../shared/data`` (holding ``flores200/``,
   ``xnli/`` or ``marc/``): ``./shared/data``, ``../shared/data`` beside the current folder, or
   ``shared/data`` beside the polyprune checkout (:func:`local_candidates`);
4. else the Hugging Face hub. ``--data-dir hub`` (or ``POLYPRUNE_DATA_DIR=hub``) asks for the hub
   even when a local folder exists.

The hub is checked before use (:func:`polyprune.data.hub.require_hub`): offline
(``HF_HUB_OFFLINE=1``) or unreachable, a command stops at once with one line."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

ENV_VAR = "POLYPRUNE_DATA_DIR"
HUB = "hub"
DATASETS = ("flores200", "xnli", "marc")


def local_candidates() -> list[Path]:
    """Folders looked at, in order, when neither ``--data-dir`` nor ``$POLYPRUNE_DATA_DIR`` is given."""
    cwd = Path.cwd()
    return [cwd / "shared" / "data", cwd.parent / "shared" / "data",
            Path(__file__).resolve().parents[4] / "shared" / "data"]


def find_local() -> Path | None:
    """The first of :func:`local_candidates` that holds one of :data:`DATASETS`."""
    for c in local_candidates():
        if any((c / name).is_dir() for name in DATASETS):
            return c.resolve()
    return None


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The local data folder by the rule above; ``None`` means the hub."""
    given = data_dir not in (None, "")
    raw = data_dir if given else os.environ.get(ENV_VAR) or None
    if raw is None:
        return find_local()
    if str(raw) == HUB:
        return None
    p = Path(raw).expanduser()
    if not p.is_dir():
        where = "--data-dir" if given else f"${ENV_VAR}"
        raise UserError(f"{where} {p} is not a folder: give the local data folder (layout as ../shared/data) "
                        f"or '{HUB}' to use the Hugging Face hub")
    return p


# evaluation tasks whose data comes from the hub when no local folder is found (MARC is local only)
TASK_HUB_DATA = {"perplexity": "FLORES+", "translation": "FLORES+", "xnli": "XNLI", "rankc": "XNLI"}
LOCAL_HINT = "give --data-dir (or POLYPRUNE_DATA_DIR) with the local data folder, e.g. ../shared/data"


def require_task_data(task: str, data_dir: str | Path | None = None) -> None:
    """Stop at once (before a model is loaded) when ``task``'s data would come from an offline hub."""
    base = task.split(":")[0].removesuffix("-lrp2")
    if base in TASK_HUB_DATA and resolve_data_dir(data_dir) is None:
        from .hub import require_hub
        require_hub(f"{TASK_HUB_DATA[base]} (task {base})", LOCAL_HINT)


def describe(data_dir: Path | None) -> str:
    """Where data comes from, for messages and listings."""
    return str(data_dir) if data_dir is not None else "the Hugging Face hub"


__all__ = ["DATASETS", "ENV_VAR", "HUB", "LOCAL_HINT", "TASK_HUB_DATA", "describe", "find_local", "local_candidates",
           "require_task_data", "resolve_data_dir"]
