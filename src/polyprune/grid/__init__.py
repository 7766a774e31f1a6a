"""Experiment grids: YAML → cells (one run folder each) → executed in-process, in a local process
pool or as Ray tasks; safe to kill at any moment and resume.

A grid file::

    name: kurz2025-small            # default: the file name
    defaults:                       # RunConfig fields shared by every cell
      calibration: {nsamples: 16, seqlen: 256}
    axes:
      models: [embedded]            # id, or {name, model, dtype, ...}
      methods: [wanda, sparsegpt]   # name, or {name, method, method_options, calibration: {...}, ...}
      sparsities: [0.5, "2:4"]      # a fraction (unstructured) or an N:M pattern, or a dict
      calibrations:                 # {name, recipe, langs, target_lang, k, contrast, ...}
        - {name: eng, recipe: text, langs: [eng_Latn]}
      seeds: [0, 1, 2]
    evaluations:                    # run on every cell (cells: all | dense | pruned)
      - {task: perplexity, langs: [eng_Latn, swh_Latn], limit: 100}
    dense: true                     # one shared unpruned baseline cell per model
    exclude: [{method: sparsegpt, sparsities: "2:4"}]
    resources: {num_cpus: 2, num_gpus: 0, memory_gb: 8}   # per cell (Ray)

Cells are the product of the axes; methods that use no calibration data (magnitude, random) ignore
the calibration axis, so identical cells collapse into one. Each cell is the folder
``<slug>-<hash>`` where the hash covers the resolved run config and its evaluations (paths and
devices excluded, default values omitted). A cell is built in a hidden temp folder beside it and
renamed into place with a ``DONE`` record written last, holding the manifest (name, size, sha256)
of every file: a folder whose ``DONE`` matches the disk is finished and never touched again;
anything else (a damaged artifact included, with a warning) is redone from scratch. A failed cell
keeps ``cell.json`` and ``error.json`` and the grid goes on; an interrupted one keeps ``cell.json``
and ``interrupted.json`` and is redone on the next run.

Several grid processes may share one folder: a worker claims a cell with a ``filelock`` lock
(``.<cell>.lock`` beside it) before touching it, so each cell is computed by one process while
the others pass over it ("busy"); the OS drops the lock of a killed process.

Modules: :mod:`.spec` (the file's schema, loading), :mod:`.expand` (axes → cells, hashes,
excludes), :mod:`.cells` (one cell's folder, the model cache), :mod:`.runners` (in-process, pool,
Ray, the child process) and :mod:`.display` (progress and ETA).
"""
from __future__ import annotations

from ..labels import NONE
from .cells import (ModelCache, cell_status, execute_cell, is_done, record_failure,
                    record_interrupted)
from .display import Display
from .expand import (AXES, DENSE, ENV_CAL_KEYS, ENV_KEYS, HASH_VERSION, LABEL_OF_AXIS, Cell,
                     canonical_hash, cell_hash, deep_merge, expand)
from .runners import GridSummary, prepare_out, run_grid, sweep_leftovers
from .spec import (AnalysisSpec, Axes, EvalSpec, Grid, GridSpec, Resources, default_out,
                   grid_from_dict, load_grid)

__all__ = ["AXES", "DENSE", "ENV_CAL_KEYS", "ENV_KEYS", "HASH_VERSION", "LABEL_OF_AXIS", "NONE",
           "AnalysisSpec", "Axes", "Cell", "Display", "EvalSpec", "Grid", "GridSpec", "GridSummary",
           "ModelCache", "Resources", "canonical_hash", "cell_hash", "cell_status", "deep_merge",
           "default_out", "execute_cell", "expand", "grid_from_dict", "is_done", "load_grid",
           "prepare_out", "record_failure", "record_interrupted", "run_grid", "sweep_leftovers"]
