"""Progress bars (rich) and resource accounting shared by long-running steps."""
from __future__ import annotations

import os
import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get("POLYPRUNE_PROGRESS", "1") != "0"


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (set POLYPRUNE_PROGRESS=0 to silence)."""
    if not enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn
    console = Console(file=sys.stderr)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=not console.is_terminal) as prog:
        task = prog.add_task(description, total=total if total is not None else len(items))  # type: ignore[arg-type]
        for item in items:
            yield item
            prog.advance(task)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: VmHWM on Linux (``ru_maxrss`` would carry a forked
    parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def peak_memory() -> dict[str, int]:
    out = {"peak_rss_bytes": peak_rss_bytes()}
    if torch.cuda.is_available():
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


class Timer:
    """Accumulates wall time per named phase."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - t0
