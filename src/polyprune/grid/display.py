"""The live view of a running grid: done / running / failed cells, elapsed time and ETA, as a rich
display on a terminal or as periodic log lines elsewhere. Cells are only read (their ``title``),
so this module imports no other part of the grid."""
from __future__ import annotations

import logging
import threading
import time

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from ..progress import console, enabled, interactive, interval_s

log = logging.getLogger("polyprune.grid")


class Display:
    """One rich display of the grid: done / running / failed cells, elapsed and ETA."""

    def __init__(self, name: str, total: int, skipped: int, workers: int, show: bool = True) -> None:
        self.name, self.total, self.skipped, self.workers = name, total, skipped, max(1, workers)
        self.done = self.failed = 0
        self.running: dict[str, float] = {}
        self.durations: list[float] = []
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()
        self.live = None
        self.beat: threading.Thread | None = None
        self.stopped = threading.Event()
        self.show = show and enabled()

    def __enter__(self):
        if self.show and interactive():
            self.live = Live(get_renderable=self.render, console=console(), refresh_per_second=2,
                             transient=False, redirect_stdout=False, redirect_stderr=False)
            self.live.__enter__()
        elif self.show:  # log file / CI: the running cells every interval, so a long cell never looks hung
            self.beat = threading.Thread(target=self._heartbeat, args=(interval_s(),), daemon=True)
            self.beat.start()
        return self

    def _heartbeat(self, every: float) -> None:
        while not self.stopped.wait(every):
            with self.lock:
                now = time.perf_counter()
                running = ", ".join(f"{t} ({_fmt_time(now - t0)})" for t, t0 in list(self.running.items())[:8])
                log.info("grid %s: %s%s", self.name, self.summary(), f" · running {running}" if running else "")

    def __exit__(self, *exc):
        self.stopped.set()
        if self.beat is not None:
            self.beat.join()
        if self.live is not None:
            self.live.refresh()
            self.live.__exit__(*exc)

    def eta_s(self) -> float | None:
        left = self.total - self.skipped - self.done - self.failed
        if left <= 0:
            return 0.0
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.perf_counter()
        running_left = sum(max(mean - (now - t), 0.0) for t in self.running.values())
        queued = left - len(self.running)
        return (running_left + queued * mean) / self.workers

    def summary(self) -> str:
        finished = self.skipped + self.done + self.failed
        eta = self.eta_s()
        eta_s = "estimating" if eta is None else _fmt_time(eta)
        return (f"{finished}/{self.total} cells · done {self.done} · reused {self.skipped} · running "
                f"{len(self.running)} · failed {self.failed} · elapsed "
                f"{_fmt_time(time.perf_counter() - self.t0)} · ETA {eta_s}")

    def render(self):
        finished = self.skipped + self.done + self.failed
        head = Table.grid(padding=(0, 1))
        head.add_row(f"[bold]grid {self.name}[/]", ProgressBar(total=self.total, completed=finished, width=30),
                     self.summary())
        rows = [head]
        now = time.perf_counter()
        for title, t in list(self.running.items())[:8]:
            rows.append(f"  [cyan]▶[/] {title}  {_fmt_time(now - t)}")
        return Group(*rows)

    def start(self, cell: Cell) -> None:
        with self.lock:
            self.running[cell.title] = time.perf_counter()

    def finish(self, cell: Cell, res: dict) -> None:
        with self.lock:
            t = self.running.pop(cell.title, None)
            if res["status"] == "done":
                self.done += 1
                self.durations.append(res.get("seconds") or (time.perf_counter() - (t or self.t0)))
            elif res["status"] == "failed":
                self.failed += 1
            else:
                self.skipped += 1
            level = logging.WARNING if res["status"] == "failed" else logging.INFO
            extra = f": {res['error']}" if res.get("error") else ""
            log.log(level, "%s %s (%.0fs)%s · %s", res["status"], cell.title, res.get("seconds") or 0.0,
                     extra, self.summary())
            if self.live is not None:
                self.live.refresh()


def _fmt_time(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
