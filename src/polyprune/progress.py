"""Progress bars (rich) and resource accounting shared by long-running steps."""
from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar


T = TypeVar("T")
log = logging.getLogger("polyprune.progress")


def enabled() -> bool:
    return os.environ.get("POLYPRUNE_PROGRESS", "1") != "0"


def interval_s() -> float:
    """Seconds between two progress log lines without a terminal (``POLYPRUNE_PROGRESS_INTERVAL``,
    default 10): bounded so that logs stay readable, short enough that long work never looks hung."""
    try:
        return max(float(os.environ.get("POLYPRUNE_PROGRESS_INTERVAL", "10")), 0.01)
    except ValueError:
        return 10.0


_CONSOLE = None

# Third-party progress bars (transformers' "Loading weights", hub downloads, datasets, lm-eval's
# tqdm) would bury one-line errors and break log files; ours replace them.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
             "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
             "TOKENIZERS_PARALLELISM": "false"}


def quiet_third_party() -> None:
    """Set :data:`QUIET_ENV` (unless the user set a value), before those libraries are imported."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if "transformers" in sys.modules:  # already imported: its flag was read at import time
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def setup_logging(verbose: bool = False) -> None:
    """Log records on stderr: through rich (above the live bars) on a terminal, else plain
    timestamped lines, one per record, that never wrap or mix with a bar."""
    level = logging.DEBUG if verbose else logging.INFO
    if interactive() or (console().is_terminal and not enabled()):
        from rich.logging import RichHandler
        handler: logging.Handler = RichHandler(console=console(), show_path=False, show_time=False,
                                               rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "datasets", "huggingface_hub", "fsspec", "lm_eval"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def console():
    """The one stderr console shared by progress bars, the grid display and log records, so that
    bars nest and log lines print above them instead of through them."""
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console
        _CONSOLE = Console(file=sys.stderr)
    return _CONSOLE


def interactive() -> bool:
    """Draw live bars (a terminal on stderr) rather than log lines (log file, CI, grid cells)."""
    return enabled() and console().is_terminal


def fmt_duration(s: float) -> str:
    s = int(round(max(s, 0.0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def progress_line(description: str, done: int, total: int | None, elapsed: float) -> str:
    """``"description: 3/18 (17%) · elapsed 1m02s · ETA 5m10s"`` (ETA from the mean pace so far)."""
    if total:
        eta = "estimating" if done == 0 else fmt_duration(elapsed / done * (total - done))
        return (f"{description}: {done}/{total} ({100 * done // total}%) · elapsed {fmt_duration(elapsed)} · "
                f"ETA {eta}")
    return f"{description}: {done} done · elapsed {fmt_duration(elapsed)}"


class _LogReporter:
    """Progress as log lines: at most one per ``interval`` (when an item finishes, or from a
    heartbeat thread while one item runs long), plus the final line."""

    def __init__(self, description: str, total: int | None, interval: float) -> None:
        self.description, self.total, self.interval = description, total, interval
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="polyprune-progress")

    def _emit(self, now: float) -> None:
        self.last = now
        log.info("%s", progress_line(self.description, self.done, self.total, now - self.t0))

    def _beat(self) -> None:
        while not self.stop.wait(self.interval / 2):
            with self.lock:
                now = time.perf_counter()
                if now - self.last >= self.interval:
                    self._emit(now)

    def __enter__(self):
        self.thread.start()
        return self

    def advance(self) -> None:
        with self.lock:
            self.done += 1
            now = time.perf_counter()
            if now - self.last >= self.interval and self.done != self.total:
                self._emit(now)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if exc[0] is None and (self.total is None or self.done == self.total):
            self._emit(time.perf_counter())


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with progress on stderr: a rich bar with ETA on a terminal, else one log line per
    ``POLYPRUNE_PROGRESS_INTERVAL`` seconds (done/total, elapsed, ETA). POLYPRUNE_PROGRESS=0 silences."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not enabled():
        yield from items
        return
    if not interactive():
        with _LogReporter(description, total, interval_s()) as rep:
            for item in items:
                yield item
                rep.advance()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console(),
                  transient=bool(console()._live_stack)) as prog:  # nested bars vanish when done
        task = prog.add_task(description, total=total)
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
    import torch
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
