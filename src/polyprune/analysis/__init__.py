"""Analyses of pruned runs, by name: ``ANALYSES[name]`` → :class:`Analysis`.

Each analysis reads runs (and, for hidden-state analyses, FLORES evaluation text), and writes
tables (CSV + JSON) and figures (PNG + PDF) through :class:`polyprune.analysis.common.Output`.
The statistics themselves are pure functions in the submodules (tested on hand-made tensors).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..registry import Registry, first_line
from .common import Options, Output, load_runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Analysis:
    name: str
    fn: Callable  # (runs: list[RunInfo], opts: Options, out: Output) -> dict summary
    min_runs: int
    help: str


ANALYSES: Registry[Analysis] = Registry("analysis", also=("all",))


def register_analysis(name: str, min_runs: int = 1, help: str = ""):
    def deco(fn):
        ANALYSES.register(name, Analysis(name, fn, min_runs, help or first_line(fn.__doc__)))
        return fn
    return deco


def _lazy(module: str, attr: str):
    def call(runs, opts, out):
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)(runs, opts, out)
    return call


register_analysis("magnitudes", 2, "feature magnitudes per calibration set: top-/bottom-β overlaps, quadrants, "
                  "unique top-k dims (needs --keep-stats)")(_lazy("magnitudes", "run_magnitudes"))
register_analysis("mask_iou", 2, "IoU of pruned weights between calibrations (seeds intersected first)")(
    _lazy("mask_iou", "run_mask_iou"))
register_analysis("snr", 1, "pruning error and SNR (dB) of hidden states per layer and language")(
    _lazy("fidelity", "run_snr"))
register_analysis("lsar", 1, "language-specific vs language-agnostic components (LSAR) and their change")(
    _lazy("lsar", "run_lsar"))
register_analysis("lape", 1, "language-specific FFN neurons (LAPE) and what pruning did to them")(
    _lazy("lape", "run_lape"))
register_analysis("restoration", 1, "per-language perplexity with chosen layers restored to dense")(
    _lazy("restoration", "run_restoration"))


def get_analysis(name: str) -> Analysis:
    return ANALYSES.resolve(name)


def analyze(runs: list[str | Path], what: list[str] | str, out: str | Path | None = None,
            opts: Options | None = None) -> dict[str, dict]:
    """Run analyses ``what`` (names, or ``"all"``) on run folders. One run: tables go to
    ``RUN/analysis/`` and figures to ``RUN/figures/``; several runs need ``out`` (tables in it,
    figures in ``out/figures/``). Returns ``{name: summary}`` (also written as ``<name>_summary.json``)."""
    opts = opts or Options()
    names = list(ANALYSES) if what in ("all", ["all"]) else ([what] if isinstance(what, str) else list(what))
    analyses = [get_analysis(n) for n in names]
    if not runs:
        raise UserError("give at least one run folder")
    infos = load_runs([Path(r) for r in runs])
    for a in analyses:
        if len(infos) < a.min_runs:
            raise UserError(f"analysis {a.name} needs at least {a.min_runs} runs, got {len(infos)}")
    if out is None:
        if len(infos) > 1:
            raise UserError("several runs: give --out DIR for the results")
        data_dir, fig_dir = infos[0].path / "analysis", infos[0].path / "figures"
    else:
        data_dir, fig_dir = Path(out), Path(out) / "figures"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    for a in analyses:
        o = Output(data_dir, fig_dir)
        t0 = time.perf_counter()
        try:
            summary = a.fn(infos, opts, o)
            summary = {"analysis": a.name, "runs": [str(r.path) for r in infos],
                       "seconds": round(time.perf_counter() - t0, 1), **summary}
            o.json(f"{a.name}_summary", summary)
        except BaseException:
            o.discard()
            raise
        o.commit()
        results[a.name] = summary
        log.info("%s: %d files in %s", a.name, len(o.written), data_dir)
    return results


__all__ = ["ANALYSES", "Analysis", "Options", "analyze", "get_analysis", "register_analysis"]
