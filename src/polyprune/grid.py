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
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from . import io as _io
from .errors import Interrupted, UserError
from .run import remove_leftovers, swap_in, write_json  # remove_leftovers only while owning the cell

log = logging.getLogger(__name__)

HASH_VERSION = 1
AXES = ("models", "methods", "sparsities", "calibrations", "seeds")
LABEL_OF_AXIS = {"models": "model", "methods": "method", "sparsities": "sparsity",
                 "calibrations": "calibration", "seeds": "seed"}
DENSE = "dense"
NONE = "-"
# run settings that describe the machine, not the experiment: kept out of the cell hash
ENV_KEYS = ("device",)
ENV_CAL_KEYS = ("data_dir",)


# --------------------------------------------------------------------------------------- schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSpec(_Strict):
    task: StrictStr
    name: StrictStr | None = None  # result file results/<name>.json (default: the task)
    langs: list[StrictStr] = Field(default_factory=list)
    limit: StrictInt | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    cells: Literal["all", "dense", "pruned"] = "all"


class AnalysisSpec(_Strict):
    what: StrictStr  # a single-run analysis of ``polyprune analyze`` (e.g. snr), run on every pruned cell
    langs: list[StrictStr] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)  # polyprune.analysis.Options fields


class Resources(_Strict):
    num_cpus: StrictFloat | StrictInt = 1.0
    num_gpus: StrictFloat | StrictInt = 0.0
    memory_gb: StrictFloat | StrictInt | None = None


class Axes(_Strict):
    models: list[str | dict] = Field(default_factory=lambda: ["embedded"])
    methods: list[str | dict] = Field(default_factory=lambda: ["wanda"])
    sparsities: list[float | str | dict] = Field(default_factory=lambda: [0.5])
    calibrations: list[str | dict | None] = Field(default_factory=lambda: [None])
    seeds: list[StrictInt] = Field(default_factory=lambda: [0])


class GridSpec(_Strict):
    name: StrictStr | None = None  # the runs go to runs/<name> without --out
    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict)
    axes: Axes
    evaluations: list[EvalSpec] = Field(default_factory=list)
    analyses: list[AnalysisSpec] = Field(default_factory=list)
    dense: StrictBool = True
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    data_dir: str | None = None


_SCHEMA_AT = {(): GridSpec, ("axes",): Axes, ("evaluations",): EvalSpec, ("analyses",): AnalysisSpec,
              ("resources",): Resources}


def _spec_error(e: ValidationError, where: str) -> UserError:
    errs = e.errors()
    err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
    loc = tuple(err["loc"])
    path = ".".join(str(x) for x in loc)
    if err["type"] == "extra_forbidden":
        parent = tuple(x for x in loc[:-1] if not isinstance(x, int))
        cls = _SCHEMA_AT.get(parent, GridSpec)
        return UserError(f"{where}: unknown key {path!r}; valid keys: {', '.join(cls.model_fields)}")
    if err["type"] == "missing":
        return UserError(f"{where}: missing key {path!r}")
    return UserError(f"{where}: {path}: {err['msg']}")


# ---------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One unit of work: prune (or not, for the dense baseline) and evaluate, into one folder."""

    id: str  # short content hash
    kind: str  # "prune" | "dense"
    labels: dict[str, str]
    config: dict[str, Any]  # RunConfig fields (dense: model/dtype/device)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    analyses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def slug(self) -> str:
        parts = [f"s{v}" if k == "seed" else v for k, v in self.labels.items() if v != NONE]
        text = "-".join(parts)
        return re.sub(r"[^A-Za-z0-9._+=]+", "-", text).strip("-.")[:72] or "cell"

    @property
    def dirname(self) -> str:
        return f"{self.slug}-{self.id}"

    @property
    def title(self) -> str:
        return " · ".join(v for v in self.labels.values() if v != NONE)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Cell":
        return cls(**d)


def canonical_hash(obj: Any, n: int = 10) -> str:
    """Short sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _hashable_config(cfg, kind: str) -> dict:
    """The experiment-defining part of a config: defaults omitted, paths/devices dropped."""
    from .config import RunConfig
    if kind == DENSE:
        return {k: v for k, v in cfg.items() if k not in ENV_KEYS and v is not None}
    assert isinstance(cfg, RunConfig)
    d = cfg.model_dump(mode="json", exclude_defaults=True)
    for k in ENV_KEYS:
        d.pop(k, None)
    cal = d.get("calibration", {})
    for k in ENV_CAL_KEYS:
        cal.pop(k, None)
    if not cal:
        d.pop("calibration", None)
    return d


def cell_hash(kind: str, hashable: dict, evaluations: list[dict], analyses: list[dict] | None = None) -> str:
    evs = [{k: v for k, v in e.items() if k != "cells" and v not in (None, [], {})} for e in evaluations]
    obj = {"v": HASH_VERSION, "kind": kind, "config": hashable, "evaluations": evs}
    if analyses:
        obj["analyses"] = analyses
    return canonical_hash(obj)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _short_model(name: str) -> str:
    return Path(str(name).rstrip("/")).name or str(name)


def _fmt_sparsity(s: float) -> str:
    return f"{s:g}"


def _axis_values(axis: str, values: list) -> list[tuple[str, dict]]:
    """Each axis value as (label, RunConfig overrides)."""
    from .masks import parse_pattern
    out = []
    for i, v in enumerate(values):
        where = f"axes.{axis}[{i}]"
        if isinstance(v, dict):
            v = dict(v)
            name = v.pop("name", None)
        else:
            name = None
        if axis == "models":
            over = v if isinstance(v, dict) else {"model": str(v)}
            if "model" not in over:
                raise UserError(f"{where}: a model entry needs 'model' (a hub id, a folder or 'embedded')")
            name = name or _short_model(over["model"])
        elif axis == "methods":
            over = v if isinstance(v, dict) else {"method": str(v)}
            if "method" not in over:
                raise UserError(f"{where}: a method entry needs 'method' (e.g. wanda)")
            name = name or over["method"]
        elif axis == "sparsities":
            if isinstance(v, dict):
                over = v
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                over = {"sparsity": float(v), "pattern": "unstructured"}
            else:
                pat = parse_pattern(str(v))
                if not pat.structured:
                    raise UserError(f"{where}: {v!r} is neither a fraction nor an N:M pattern such as 2:4")
                over = {"pattern": str(pat), "sparsity": pat.sparsity}
            pat = parse_pattern(over.get("pattern", "unstructured"))
            name = name or (str(pat) if pat.structured else _fmt_sparsity(float(over.get("sparsity", 0.5))))
        elif axis == "calibrations":
            if v is None:
                over, name = {}, name or NONE
            elif isinstance(v, dict):
                over = {"calibration": v}
                name = name or _calibration_label(v)
            else:
                over, name = {"calibration": {"recipe": str(v)}}, name or str(v)
        else:  # seeds
            if isinstance(v, bool) or not isinstance(v, int):
                raise UserError(f"{where}: a seed is an integer, got {v!r}")
            over, name = {"seed": int(v)}, str(v)
        # a label becomes part of the cell's folder name: contained like every other name
        out.append((_io.check_name(str(name), f"{where} name"), over))
    labels = [n for n, _ in out]
    dup = sorted({n for n in labels if labels.count(n) > 1})
    if dup:
        raise UserError(f"axes.{axis}: two values share the name {dup[0]!r}: give each a distinct 'name'")
    return out


def _calibration_label(c: dict) -> str:
    langs = c.get("langs") or []
    langs = [langs] if isinstance(langs, str) else list(langs)
    lab = "+".join(str(x).split("_")[0] for x in langs)
    if c.get("target_lang"):
        lab += f">{str(c['target_lang']).split('_')[0]}"
    recipe = c.get("recipe") or ("file" if c.get("file") else "")
    return f"{recipe}:{lab}" if lab else (recipe or NONE)


@dataclass
class Grid:
    spec: GridSpec
    cells: list[Cell]
    source: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name or "grid"

    def fingerprint(self) -> dict:
        return {"name": self.name, "hash_version": HASH_VERSION,
                "cells": [{"id": c.id, "dir": c.dirname, "kind": c.kind, "labels": c.labels} for c in self.cells]}


def default_out(grid_path: Path, name: str) -> Path:
    """Where a grid's runs go when --out is not given: ``runs/<grid name>`` (the name stays a plain name)."""
    from .io import child
    return child(Path("runs"), name, f"{grid_path}: grid name")


def load_grid(path: str | Path) -> Grid:
    """Read and fully validate a grid YAML file (nothing is started)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"grid file {p} does not exist: give a YAML grid (see recipes/)")
    from .io import read_yaml
    data = read_yaml(p, "fix the grid (see recipes/) and save it as UTF-8", what="well-formed YAML")
    if data is None:
        raise UserError(f"{p} is empty: a grid needs at least 'axes' (see recipes/)")
    if not isinstance(data, dict):
        raise UserError(f"{p}: a grid is a mapping with keys {', '.join(GridSpec.model_fields)}")
    data.setdefault("name", p.stem)
    return grid_from_dict(data, where=str(p))


def grid_from_dict(data: dict, where: str = "grid", data_dir: str | None = None,
                   check_registries: bool = True) -> Grid:
    """Validate a grid mapping and expand it into cells."""
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as e:
        raise _spec_error(e, where) from None
    if spec.name is not None:
        _io.check_name(spec.name, f"{where}: grid name")
    cells = expand(spec, where, data_dir=data_dir, check_registries=check_registries)
    return Grid(spec, cells, where)


def expand(spec: GridSpec, where: str = "grid", data_dir: str | None = None,
           check_registries: bool = True) -> list[Cell]:
    """All cells of a grid, in a stable order (dense baselines first), duplicates removed."""
    from .config import CalibrationConfig, check_config, validate_config
    from .methods import get_method

    for axis in AXES:
        if not getattr(spec.axes, axis):
            raise UserError(f"{where}: axes.{axis} is empty: give at least one value (or drop the key)")
    axis_vals = {a: _axis_values(a, getattr(spec.axes, a)) for a in AXES}
    for a, vals in axis_vals.items():  # each entry alone, so errors point at it
        for i, (_, over) in enumerate(vals):
            validate_config(deep_merge(spec.defaults, over), f"{where}: axes.{a}[{i}]", True, check_registries)
    validate_config(spec.defaults, f"{where}: defaults", True, check_registries)
    _check_excludes(spec.exclude, axis_vals, where)
    names = [_io.check_name(_eval_name(e), f"{where}: evaluations[{i}].name")
             for i, e in enumerate(spec.evaluations)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{where}: two evaluations are named {dup[0]!r}: give each a distinct 'name'")
    if check_registries:
        _check_tasks(spec.evaluations, where)
        _check_analyses(spec.analyses, where)
    analyses = [a.model_dump() for a in spec.analyses]
    ddir = data_dir or spec.data_dir
    resources = spec.resources.model_dump()

    def evals_for(kind: str) -> list[dict]:
        want = ("all", DENSE) if kind == DENSE else ("all", "pruned")
        return [{"name": _eval_name(e), "task": e.task, "langs": list(e.langs), "limit": e.limit,
                 "options": dict(e.options), "cells": e.cells} for e in spec.evaluations if e.cells in want]

    cells: dict[str, Cell] = {}
    dense_cells: dict[str, Cell] = {}
    import itertools
    for combo in itertools.product(*(axis_vals[a] for a in AXES)):
        labels = {LABEL_OF_AXIS[a]: lab for a, (lab, _) in zip(AXES, combo)}
        if _excluded(labels, spec.exclude):
            continue
        merged = spec.defaults
        for _, over in combo:
            merged = deep_merge(merged, over)
        cell = f"{where}: cell {'/'.join(labels.values())}"
        cfg = validate_config(merged, cell, True, check_registries)
        if not get_method(cfg.method).needs and not cfg.keep_stats:  # data-free: the calibration axis does not apply
            cfg = cfg.model_copy(update={"calibration": CalibrationConfig()})
            labels["calibration"] = NONE
        elif cfg.calibration.file and not Path(cfg.calibration.file).is_file():
            raise UserError(f"{cell}: calibration file {cfg.calibration.file} does not exist")
        try:
            check_config(cfg)  # the rules a RunConfig applies, on the cell as it will run
        except UserError as e:
            raise UserError(f"{cell}: {e}") from None
        if ddir and cfg.calibration.data_dir is None and (cfg.calibration.recipe or cfg.calibration.contrast
                                                           or cfg.calibration.contrast_lang):
            cfg.calibration.data_dir = str(ddir)
        evs = evals_for("pruned")
        cid = cell_hash("prune", _hashable_config(cfg, "prune"), evs, analyses)
        if cid not in cells:
            cells[cid] = Cell(cid, "prune", labels, cfg.model_dump(mode="json"), evs, resources, analyses)
        if spec.dense:
            dcfg = {"model": cfg.model, "dtype": cfg.dtype, "device": cfg.device}
            devs = evals_for(DENSE)
            did = cell_hash(DENSE, _hashable_config(dcfg, DENSE), devs)
            if did not in dense_cells:
                dl = {"model": labels["model"], "method": DENSE, "sparsity": NONE, "calibration": NONE,
                      "seed": NONE}
                dense_cells[did] = Cell(did, DENSE, dl, dcfg, devs, resources)
    out = list(dense_cells.values()) + list(cells.values())
    if not out:
        raise UserError(f"{where}: the grid has no cells (every combination is excluded)")
    return out


def _check_tasks(evals: list[EvalSpec], where: str) -> None:
    """Every task known to the evaluation suite, with known options and languages."""
    if not evals:
        return
    from . import evaluate as ev
    from .languages import get_language
    for i, e in enumerate(evals):
        try:
            task = ev.get_task(e.task)
            check = getattr(ev, "_check_options", None)  # option names, validated before anything starts
            if check is not None:
                check(task, {**ev.parse_task(e.task)[1], **e.options})
            for code in e.langs:
                get_language(code)
        except UserError as err:
            raise UserError(f"{where}: evaluations[{i}]: {err}") from None


def _check_analyses(specs: list[AnalysisSpec], where: str) -> None:
    """Single-run analyses with known option names (see ``polyprune analyze``)."""
    if not specs:
        return
    from dataclasses import fields
    from .analysis import Options, get_analysis
    from .languages import get_language
    known = [f.name for f in fields(Options) if f.name not in ("langs", "data_dir")]
    for i, a in enumerate(specs):
        try:
            an = get_analysis(a.what)
            if an.min_runs > 1:
                raise UserError(f"analysis {a.what} compares several runs: run `polyprune analyze` on the cells "
                                f"after the grid")
            bad = sorted(set(a.options) - set(known))
            if bad:
                raise UserError(f"unknown option {bad[0]!r}; valid options: {', '.join(known)}")
            for code in a.langs:
                get_language(code)
        except UserError as err:
            raise UserError(f"{where}: analyses[{i}]: {err}") from None


def _eval_name(e: EvalSpec) -> str:
    if e.name:
        return e.name
    try:
        from .evaluate import result_name
        return result_name(e.task, e.options)
    except ImportError:
        return e.task.replace(":", "_")


def _norm_label(v: Any) -> str:
    if isinstance(v, float):
        return _fmt_sparsity(v)
    return str(v)


def _check_excludes(rules: list[dict], axis_vals: dict, where: str) -> None:
    keys = {**{a: a for a in AXES}, **{LABEL_OF_AXIS[a]: a for a in AXES}}
    for i, rule in enumerate(rules):
        for k, v in rule.items():
            if k not in keys:
                raise UserError(f"{where}: exclude[{i}]: unknown key {k!r}; valid keys: {', '.join(LABEL_OF_AXIS.values())}")
            known = [lab for lab, _ in axis_vals[keys[k]]]
            vals = v if isinstance(v, list) else [v]
            for x in vals:
                if _norm_label(x) not in known:
                    raise UserError(f"{where}: exclude[{i}]: {k} {x!r} is not a value of axes.{keys[k]} "
                                    f"({', '.join(known)})")


def _excluded(labels: dict[str, str], rules: list[dict]) -> bool:
    keys = {**{a: LABEL_OF_AXIS[a] for a in AXES}, **{v: v for v in LABEL_OF_AXIS.values()}}
    for rule in rules:
        if all(labels[keys[k]] in [_norm_label(x) for x in (v if isinstance(v, list) else [v])]
               for k, v in rule.items()):
            return True
    return False


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
        from .model import load_model, prunable_weights
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
        import torch
        from .model import prunable_weights
        with torch.no_grad():
            for n, m in prunable_weights(self.model).items():
                m.weight.data.copy_(self._pristine[n])


def _evaluate(model, tok, ev: dict, data_dir: str | None) -> dict:
    from .evaluate import evaluate
    return evaluate(model, tok, ev["task"], ev["langs"] or None, data_dir, ev["limit"], **ev["options"])


def _do_cell(cell: Cell, tmp: Path, cache: ModelCache, data_dir: str | None) -> None:
    """The work of one cell, written into the temp folder ``tmp``."""
    from .config import validate_config
    cfg_d = cell.config
    if cell.kind != DENSE:
        from .pipeline import check_positions
        check_positions(validate_config(cfg_d, f"cell {cell.dirname}"))
    model, tok = cache.get(cfg_d["model"], cfg_d.get("dtype"), cfg_d.get("device"))
    try:
        if cell.kind != DENSE:
            from .pipeline import build_run_calibration, prune_with_config
            from .run import write_run
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
            from .analysis import Options, analyze
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


# ---------------------------------------------------------------------------------------- display
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
        from .progress import enabled
        self.show = show and enabled()

    def __enter__(self):
        from .progress import console, interactive, interval_s
        if self.show and interactive():
            from rich.live import Live
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
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
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


# --------------------------------------------------------------------------------------- runners
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
        import ctypes
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
    from .progress import quiet_third_party
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main())
