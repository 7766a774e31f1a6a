"""Cell folders: executing one cell atomically (built in a hidden temp folder, renamed into place,
``DONE`` with a manifest written last), recording failures and interruptions, telling finished
cells from damaged ones, and the model cache shared by the cells of one process."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from .. import io as _io
from ..analysis import Options, analyze
from ..config import validate_config
from ..errors import UserError
from ..evaluate import evaluate
from ..model import load_model, prunable_weights
from ..pipeline import build_run_calibration, check_positions, prune_with_config
from ..run import remove_leftovers, swap_in, write_json, write_run  # remove_leftovers only while owning the cell
from .expand import DENSE, Cell

log = logging.getLogger("polyprune.grid")

# ----------------------------------------------------------------------------------- run folders
_VERIFIED: dict[str, tuple] = {}  # folder → (stat signature of its listed files, verdict)


def is_done(folder: Path) -> bool:
    """Finished: ``DONE`` is there and its manifest (names, sizes, sha256) matches the disk.

    A mismatch (a truncated or edited artifact) logs one warning and counts as unfinished, so the
    cell is redone. A ``DONE`` without a manifest was written before manifests existed and is
    trusted as it is. Verdicts are remembered while the files' sizes and mtimes stay the same."""
    folder = Path(folder)
    done = folder / "DONE"
    try:
        info = json.loads(done.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        log.warning("cell %s: DONE is unreadable; the cell will be redone", folder.name)
        return False
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict):
        return True
    sig = []
    for rel in sorted(files):
        try:
            st = (folder / rel).stat()
            sig.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append((rel, None, None))
    key = str(folder.resolve())
    cached = _VERIFIED.get(key)
    if cached is not None and cached[0] == tuple(sig):
        return cached[1]
    why = _io.manifest_mismatch(folder, files)
    if why:
        log.warning("cell %s is damaged (%s): it will be redone", folder.name, why)
    _VERIFIED[key] = (tuple(sig), why is None)
    return why is None


def _record(cell: Cell, out: Path, name: str, data: dict) -> None:
    """Replace the cell's folder by ``cell.json`` + ``name`` (no DONE: the cell is redone)."""
    folder = Path(out) / cell.dirname
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=str(out)))
    try:
        write_json(tmp / "cell.json", cell.to_json())
        write_json(tmp / name, {**data, "host": socket.gethostname(), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def record_failure(cell: Cell, out: Path, error: str, tb: str = "") -> None:
    """Leave ``cell.json`` + ``error.json`` (no DONE) in the cell's folder."""
    _record(cell, out, "error.json", {"error": error, "traceback": tb})


def record_interrupted(cell: Cell, out: Path) -> None:
    """Leave ``cell.json`` + ``interrupted.json`` (no DONE): not a failure, redone on the next run."""
    with contextlib.suppress(OSError):
        _record(cell, out, "interrupted.json", {"interrupted": True})


class ModelCache:
    """Keeps one loaded model and a copy of its prunable weights, restored after every cell."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.model = None
        self.tok = None
        self._pristine: dict[str, Any] = {}

    def get(self, name: str, dtype: str | None = None, device: str | None = None):
        key = (name, dtype, device)
        if key != self.key:
            self.model = self.tok = None
            self._pristine = {}
            self.model, self.tok = load_model(name, dtype, device)
            self._pristine = {n: m.weight.detach().clone() for n, m in prunable_weights(self.model).items()}
            self.key = key
        return self.model, self.tok

    def restore(self) -> None:
        if self.model is None:
            return
        with torch.no_grad():
            for n, m in prunable_weights(self.model).items():
                m.weight.data.copy_(self._pristine[n])


def _evaluate(model, tok, ev: dict, data_dir: str | None) -> dict:
    return evaluate(model, tok, ev["task"], ev["langs"] or None, data_dir, ev["limit"], **ev["options"])


def _do_cell(cell: Cell, tmp: Path, cache: ModelCache, data_dir: str | None) -> None:
    """The work of one cell, written into the temp folder ``tmp``."""
    cfg_d = cell.config
    if cell.kind != DENSE:
        check_positions(validate_config(cfg_d, f"cell {cell.dirname}"))
    model, tok = cache.get(cfg_d["model"], cfg_d.get("dtype"), cfg_d.get("device"))
    try:
        if cell.kind != DENSE:
            cfg = validate_config(cfg_d, f"cell {cell.dirname}")
            if data_dir and cfg.calibration.data_dir is None:
                cfg.calibration.data_dir = str(data_dir)
            cal = build_run_calibration(cfg, tok)
            masks = prune_with_config(model, cal, cfg)
            write_run(tmp, cfg, masks, cal, tok, model)
        for ev in cell.evaluations:
            res = _evaluate(model, tok, ev, data_dir)
            write_json(_io.child(tmp / "results", ev["name"], "evaluation name", ".json"), res)
    finally:
        cache.restore()
    if cell.kind != DENSE:
        for a in cell.analyses:  # on the run folder being built (loads the model itself)
            analyze([tmp], a["what"], opts=Options(langs=list(a["langs"]), data_dir=data_dir, **a["options"]))


def execute_cell(cell: Cell, out: str | Path, cache: ModelCache | None = None,
                 data_dir: str | None = None, claim: bool = True) -> dict:
    """Run one cell into ``out/<cell.dirname>`` (atomically). Returns ``{"status", "seconds", "error"}``
    with status done, skipped (finished before), busy (another process owns the cell) or failed;
    errors are recorded in the folder, never raised (except KeyboardInterrupt, after marking the
    cell interrupted). ``claim``: take the cell's lock here (False when the caller holds it)."""
    out = Path(out)
    folder = out / cell.dirname
    if is_done(folder):
        return {"status": "skipped", "seconds": 0.0, "error": None}
    lock = _io.try_own(folder) if claim else None
    if claim and lock is None:
        return {"status": "busy", "seconds": 0.0, "error": None}
    try:
        if claim and is_done(folder):  # finished by its owner while we looked
            return {"status": "skipped", "seconds": 0.0, "error": None}
        return _execute_owned(cell, out, folder, cache or ModelCache(), data_dir)
    finally:
        if lock is not None:
            _io.release(lock, folder)


def _execute_owned(cell: Cell, out: Path, folder: Path, cache: ModelCache, data_dir: str | None) -> dict:
    remove_leftovers(folder)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=str(out)))
    try:
        write_json(tmp / "cell.json", cell.to_json())
        _do_cell(cell, tmp, cache, data_dir)
        secs = time.perf_counter() - t0
        write_json(tmp / "DONE", {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": secs,
                                   "host": socket.gethostname(), "pid": os.getpid(),
                                   "files": _io.manifest(tmp, skip=("DONE",))})
        swap_in(tmp, folder)
        return {"status": "done", "seconds": secs, "error": None}
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        record_interrupted(cell, out)
        raise
    except SystemExit:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException as e:  # noqa: BLE001  (a failed cell must not stop the grid)
        shutil.rmtree(tmp, ignore_errors=True)
        msg = f"{type(e).__name__}: {e}" if not isinstance(e, UserError) else str(e)
        log.error("cell %s failed: %s", cell.dirname, msg)
        record_failure(cell, out, msg, traceback.format_exc())
        return {"status": "failed", "seconds": time.perf_counter() - t0, "error": msg}


def cell_status(out: Path, cell: Cell) -> dict:
    folder = Path(out) / cell.dirname
    if is_done(folder):
        return {"status": "done", "error": None}
    if (folder / "interrupted.json").is_file():
        return {"status": "interrupted", "error": None}
    err = folder / "error.json"
    if err.is_file():
        try:
            return {"status": "failed", "error": json.loads(err.read_text())["error"]}
        except (OSError, ValueError, KeyError):
            pass
    return {"status": "pending", "error": None}
