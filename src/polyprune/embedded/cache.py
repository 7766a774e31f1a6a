"""The cached model folder: built once under a lock, in a temp folder renamed into place, then
recognised by its marker file (format version, transformers major version)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .convert import EMBEDDED_DIRNAME, FORMAT_VERSION, MARKER, _convert, _require_demo_packages

logger = logging.getLogger(__name__)

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)
_FREE_SPACE_NEEDED = 2_000_000_000  # GGUF (0.25 GB) + float32 safetensors (1.1 GB) + slack


# --------------------------------------------------------------------------------------------
# public API


def default_cache_dir() -> Path:
    """``$POLYPRUNE_CACHE`` if set, else ``~/.cache/polyprune``."""
    env = os.environ.get("POLYPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polyprune"


def ensure_embedded(cache_dir: str | Path | None = None) -> Path:
    """Path of a local Hugging Face folder holding Gemma-3-270M (float32), converting it on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`; the model lives in its
    ``gemma-3-270m/`` subfolder. Raises :class:`UserError` when the ``[demo]`` packages are
    missing or the cache is not writable.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / EMBEDDED_DIRNAME
    if _is_complete(target):
        logger.debug("embedded model: cached at %s", target)
        return target

    _require_demo_packages()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the model cache {root} ({exc}); set POLYPRUNE_CACHE to a "
                        "writable folder") from exc

    with _locked(root / f".{EMBEDDED_DIRNAME}.lock") as exclusive:
        if _is_complete(target):  # another process finished it while we waited
            return target
        _remove_stale(root, target, leftovers=exclusive)
        _check_free_space(root)
        logger.info("embedded model: converting Gemma-3-270M from GGUF into %s (one-off, about a minute)",
                    target)
        started = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_DIRNAME}.tmp-", dir=root))
        try:
            staged = work / EMBEDDED_DIRNAME
            _convert(work, staged)
            try:
                os.replace(staged, target)
            except OSError:
                if not _is_complete(target):  # not a lost race: a real failure
                    raise
                logger.info("embedded model: another process finished first; using its copy")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("embedded model: ready in %.0f s at %s", time.perf_counter() - started, target)
    return target


# --------------------------------------------------------------------------------------------
# cache bookkeeping


def _is_complete(folder: Path) -> bool:
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # An older format is rebuilt; a newer one (written by a newer polyprune sharing the cache)
    # is accepted as it is, so that two versions never take turns deleting each other's copy.
    if not isinstance(info, dict) or not isinstance(info.get("format"), int) or info["format"] < FORMAT_VERSION:
        return False
    written_by = (info.get("versions") or {}).get("transformers")
    if written_by and _major(written_by) != _major(_installed_transformers()):
        return False  # config/tokenizer files follow the writer's conventions: rebuild
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def _major(version: str | None) -> str:
    return (version or "").split(".")[0]


def _installed_transformers() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:  # pragma: no cover - core dependency
        return None


def _remove_stale(root: Path, target: Path, leftovers: bool) -> None:
    """Drop an outdated/incomplete copy and, when we hold the lock (``leftovers``), the temp
    folders of conversions that were killed (no one else can be writing them)."""
    if leftovers:
        for leftover in root.glob(f".{EMBEDDED_DIRNAME}.tmp-*"):
            logger.info("embedded model: removing leftover %s of an interrupted conversion", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():
        logger.info("embedded model: %s is incomplete or from an older polyprune; rebuilding it", target)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Exclusive lock on ``path`` (``filelock``), waiting for another converting process; yields
    True once held. The lock is ``flock``-based where available, so a killed converter never blocks."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("embedded model: waiting for another process converting it (lock %s)", path)
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


def _check_free_space(root: Path) -> None:
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return
    if free < _FREE_SPACE_NEEDED:
        raise UserError(f"converting the embedded model needs about {_FREE_SPACE_NEEDED / 1e9:.0f} GB free "
                        f"in {root} ({free / 1e9:.1f} GB left); free space or set POLYPRUNE_CACHE elsewhere")
