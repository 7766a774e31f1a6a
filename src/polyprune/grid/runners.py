"""Running a grid: every unfinished cell in this process, in a pool of child processes (one per
cell, killed with the grid) or as Ray tasks; the child process entry point
(``python -m polyprune.grid``) reads its cell from stdin."""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import io as _io
from ..errors import Interrupted, UserError
from ..progress import quiet_third_party
from ..run import remove_leftovers, write_json  # remove_leftovers only while owning the cell
from .cells import ModelCache, cell_status, execute_cell, is_done, record_failure, record_interrupted
from .display import Display
from .expand import Cell
from .spec import Grid, Resources

log = logging.getLogger("polyprune.grid")


@dataclass
class GridSummary:
    out: Path
    total: int
    skipped: int
    done: int
    failed: list[tuple[str, str]]
    seconds: float
    busy: int = 0  # cells owned by another process running this grid at the same time

    @property
    def ok(self) -> bool:
        return not self.failed


def prepare_out(grid: Grid, out: Path) -> None:
    """Refuse an output folder holding another grid's runs; record this grid's fingerprint."""
    out = Path(out)
    gj = out / "grid.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder for the grid's runs")
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        if not gj.is_file():
            raise UserError(f"--out {out} is not empty and holds no grid.json: give a new or empty folder")
        try:
            stored = json.loads(gj.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{gj} is unreadable: give another --out") from None
        if stored.get("name") != grid.name:
            raise UserError(f"--out {out} holds the runs of grid {stored.get('name')!r}, not {grid.name!r}: "
                            f"give another --out")
    out.mkdir(parents=True, exist_ok=True)
    fp = grid.fingerprint()
    fp["spec"] = grid.spec.model_dump(mode="json")
    fp["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(gj, fp)


def sweep_leftovers(grid: Grid, out: Path) -> None:
    """Remove what killed processes left beside cells (a stale lock, a swapped-out folder), also
    beside finished cells that no run claims again; cells owned by a live process are left alone."""
    names = {p.name for p in Path(out).iterdir() if p.name.startswith(".")}
    if not names:
        return
    for c in grid.cells:
        if any(n.startswith(f".{c.dirname}.") for n in names):
            folder = Path(out) / c.dirname
            lock = _io.try_own(folder)
            if lock is not None:
                remove_leftovers(folder)
                _io.release(lock, folder)


def run_grid(grid: Grid, out: str | Path, *, workers: int = 1, ray: str | None = None,
             data_dir: str | None = None, in_process: bool = False, show: bool = True) -> GridSummary:
    """Execute every unfinished cell of ``grid`` under ``out``; finished cells are reused.

    ``in_process``: cells run one after another in this process, sharing one loaded model;
    otherwise each cell runs in its own subprocess (``workers`` at a time), or as a Ray task
    (``ray``: ``auto``, ``local`` or a cluster address)."""
    out = Path(out)
    if workers < 1:
        raise UserError(f"--workers {workers}: give at least 1")
    prepare_out(grid, out)
    sweep_leftovers(grid, out)
    data_dir = data_dir or grid.spec.data_dir
    t0 = time.perf_counter()
    pending = [c for c in grid.cells if not is_done(out / c.dirname)]
    skipped = len(grid.cells) - len(pending)
    nworkers = 1 if in_process else workers
    results: dict[str, dict] = {}
    try:
        with Display(grid.name, len(grid.cells), skipped, nworkers, show) as disp:
            if ray:
                results = _run_ray(pending, out, data_dir, ray, grid.spec.resources, disp)
            elif in_process:
                cache = ModelCache()
                for c in pending:
                    disp.start(c)
                    results[c.id] = execute_cell(c, out, cache, data_dir)
                    disp.finish(c, results[c.id])
            else:
                results = _run_pool(pending, out, data_dir, workers, disp)
    except KeyboardInterrupt:
        finished = [c.dirname for c in pending if is_done(out / c.dirname)]
        if finished:
            raise Interrupted(f"interrupted; {len(finished)} cell(s) finished and kept in {out} "
                              f"({', '.join(finished)}); rerun to do the rest") from None
        raise Interrupted(f"interrupted; no cell finished in this run ({skipped} finished before); "
                          f"rerun to resume") from None
    failed = [(c.dirname, results[c.id]["error"] or "failed") for c in pending
              if results.get(c.id, {}).get("status") == "failed"]
    done = sum(1 for c in pending if results.get(c.id, {}).get("status") == "done")
    busy = sum(1 for c in pending if results.get(c.id, {}).get("status") == "busy")
    if busy:
        log.warning("%d cell(s) were being computed by another polyprune process on %s; rerun afterwards to "
                    "pick up any it did not finish", busy, out)
    return GridSummary(out, len(grid.cells), skipped, done, failed, time.perf_counter() - t0, busy)


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Linux: the cell process dies with the grid process (no orphans after kill -9)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


_STOP = threading.Event()  # set when the grid is interrupted: children killed then are not failures


def _run_subprocess(cell: Cell, out: Path, data_dir: str | None, procs: set) -> dict:
    """One cell in a child process; this process owns the cell's lock meanwhile (a killed child
    cannot leave a lock behind, and the child dies with us)."""
    folder = out / cell.dirname
    lock = _io.try_own(folder)
    if lock is None:
        return {"status": "busy", "seconds": 0.0, "error": None}
    try:
        if is_done(folder):
            return {"status": "skipped", "seconds": 0.0, "error": None}
        return _run_child(cell, out, data_dir, procs)
    finally:
        _io.release(lock, folder)


def _run_child(cell: Cell, out: Path, data_dir: str | None, procs: set) -> dict:
    if _STOP.is_set():
        return {"status": "interrupted", "seconds": 0.0, "error": None}
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    payload = json.dumps({"cell": cell.to_json(), "out": str(out), "data_dir": data_dir})
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}  # progress as log lines in the cell's log
    t0 = time.perf_counter()
    with open(logs / f"{cell.dirname}.log", "w", encoding="utf-8") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "polyprune.grid"], stdin=subprocess.PIPE, stdout=logf,
                                stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
        procs.add(proc)
        if _STOP.is_set():  # interrupted while it started: the killer may have missed it
            proc.kill()
        try:
            proc.communicate(payload.encode("utf-8"))
        finally:
            procs.discard(proc)
    secs = time.perf_counter() - t0
    st = cell_status(out, cell)
    if st["status"] == "done":
        return {"status": "done", "seconds": secs, "error": None}
    if _STOP.is_set() or proc.returncode == 130:  # the grid (or the child) was interrupted
        remove_leftovers(out / cell.dirname)
        record_interrupted(cell, out)
        return {"status": "interrupted", "seconds": secs, "error": None}
    if proc.returncode != 1 or st["status"] != "failed":
        rc = proc.returncode
        why = f"killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        tail = _tail(logs / f"{cell.dirname}.log")
        msg = f"cell process {why} (log: {logs / (cell.dirname + '.log')})"
        remove_leftovers(out / cell.dirname)
        record_failure(cell, out, msg, tail)
        return {"status": "failed", "seconds": secs, "error": msg}
    return {"status": "failed", "seconds": secs, "error": st["error"]}


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def _run_pool(cells: list[Cell], out: Path, data_dir, workers: int, disp: Display) -> dict:
    results: dict[str, dict] = {}
    procs: set = set()

    def job(c: Cell) -> None:
        disp.start(c)
        res = _run_subprocess(c, out, data_dir, procs)
        results[c.id] = res
        disp.finish(c, res)

    _STOP.clear()
    pool = ThreadPoolExecutor(max_workers=workers)
    futures: list = []
    try:
        futures = [pool.submit(job, c) for c in cells]
        for f in futures:
            while not f.done():
                time.sleep(0.2)
            f.result()
    except KeyboardInterrupt:
        _STOP.set()
        for f in futures:
            f.cancel()
        for p in list(procs):
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


_WORKER_CACHE: ModelCache | None = None


def _ray_cell(cell_d: dict, out: str, data_dir: str | None) -> dict:
    """Body of a Ray task: one cell, with a model cache kept for the life of the worker."""
    global _WORKER_CACHE
    os.environ.setdefault("POLYPRUNE_PROGRESS", "0")
    if _WORKER_CACHE is None:
        _WORKER_CACHE = ModelCache()
    return execute_cell(Cell.from_json(cell_d), out, _WORKER_CACHE, data_dir)


def _run_ray(cells: list[Cell], out: Path, data_dir, address: str, res: Resources, disp: Display) -> dict:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs the ray package: pip install 'polyprune[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"--ray {address}: cannot connect ({str(e).splitlines()[0]}): start a cluster "
                            f"with `ray start --head` or use --ray local") from None
    opts: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_retries": 0}
    if res.memory_gb:
        opts["memory"] = int(res.memory_gb * 2**30)
    remote = ray.remote(**opts)(_ray_cell)
    refs = {}
    outs = str(Path(out).resolve())
    ddir = str(Path(data_dir).resolve()) if data_dir else None
    for c in cells:
        refs[remote.remote(c.to_json(), outs, ddir)] = c
        disp.start(c)
    results: dict[str, dict] = {}
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
        for r in ready:
            c = refs.pop(r)
            try:
                results[c.id] = ray.get(r)
            except Exception as e:  # noqa: BLE001  (worker crash, OOM kill, …)
                msg = f"ray task failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                remove_leftovers(out / c.dirname)
                record_failure(c, out, msg, str(e)[-4000:])
                results[c.id] = {"status": "failed", "seconds": 0.0, "error": msg}
            disp.finish(c, results[c.id])
    return results


def _child_main() -> int:  # pragma: no cover - exercised through subprocesses
    """``python -m polyprune.grid``: run the cell described on stdin (exit 0 done, 1 failed)."""
    quiet_third_party()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    payload = json.loads(sys.stdin.read())
    try:  # the parent process owns the cell's lock
        res = execute_cell(Cell.from_json(payload["cell"]), payload["out"], None, payload.get("data_dir"),
                           claim=False)
    except KeyboardInterrupt:
        return 130
    return 0 if res["status"] in ("done", "skipped") else 1
