"""The demo: dense, magnitude and Wanda (50 %) calibrated on English, French, Chinese and Swahili,
each scored by per-language perplexity on held-out FLORES lines — a grid run in-process on the
embedded model, offline, in minutes on a laptop CPU.

A module of the top layer (it runs a grid and writes a report), apart from the
:mod:`polyprune.embedded` package, which sits low because ``--model embedded`` resolves through it:
nested under a ``demo`` package, importing the model code would import the demo layer."""
from __future__ import annotations

from pathlib import Path

from .errors import UserError

DEMO_LANGS = ("eng_Latn", "fra_Latn", "zho_Hans", "swh_Latn")
# sized for ≤ 10 minutes on 2 CPU cores (see docs/results.md for the measured wall time)
DEMO_NSAMPLES = 8
DEMO_SEQLEN = 256
DEMO_EVAL_LINES = 20


def find_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder by the common rule (:func:`polyprune.data.resolve_data_dir`); the demo runs
    offline, so it must hold ``flores200/``."""
    from .data import local_candidates, resolve_data_dir
    d = resolve_data_dir(data_dir)
    if d is not None and (d / "flores200").is_dir():
        return d.resolve()
    looked = [str(d)] if d is not None else [str(c) for c in local_candidates()]
    raise UserError(f"no offline data found (looked for flores200/ in {', '.join(looked)}): "
                    f"give --data-dir or set POLYPRUNE_DATA_DIR")


def demo_grid(model: str = "embedded", nsamples: int = DEMO_NSAMPLES, seqlen: int = DEMO_SEQLEN,
              limit: int = DEMO_EVAL_LINES, recipe: str = "text") -> dict:
    """The demo as a grid mapping (see :mod:`polyprune.grid`)."""
    cals = [{"name": code.split("_")[0], "recipe": recipe, "langs": [code]} for code in DEMO_LANGS]
    return {
        "name": "demo",
        "description": "dense vs magnitude vs Wanda 50% calibrated per language; per-language perplexity",
        "defaults": {"calibration": {"nsamples": nsamples, "seqlen": seqlen}},
        "axes": {"models": [model], "methods": ["magnitude", "wanda"], "sparsities": [0.5],
                 "calibrations": cals, "seeds": [0]},
        "evaluations": [{"task": "perplexity", "langs": list(DEMO_LANGS), "limit": limit}],
        "dense": True,
    }


def run_demo(out: str | Path = "demo-runs", data_dir: str | Path | None = None, model: str = "embedded",
             nsamples: int = DEMO_NSAMPLES, seqlen: int = DEMO_SEQLEN, limit: int = DEMO_EVAL_LINES,
             show: bool = True, figures: bool = True) -> dict:
    """Run (or resume) the demo grid in-process and write its report; returns the report paths,
    the grid summary and the perplexity table."""
    from .grid import grid_from_dict, run_grid
    from .report import write_report
    ddir = find_data_dir(data_dir)
    grid = grid_from_dict(demo_grid(model, nsamples, seqlen, limit), where="demo", data_dir=str(ddir))
    summary = run_grid(grid, out, in_process=True, data_dir=str(ddir), show=show)
    if summary.done + summary.skipped == 0:
        raise UserError(f"every demo cell failed (see {Path(out)}/*/error.json)")
    rep = write_report(out, figures=figures)
    rep["summary"] = summary
    rep["table"] = next((t for t in rep["tables_obj"] if t.task == "perplexity"), None)
    return rep
