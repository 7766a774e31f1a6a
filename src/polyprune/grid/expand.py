"""Grid expansion: axis values → labelled cells, each with a content hash that names its folder
(``<slug>-<hash>``), duplicates collapsed, excludes applied. Changing anything here that enters a
label or a hash renames cell folders, so finished runs would be redone.

:func:`expand` takes a validated ``GridSpec`` (:mod:`polyprune.grid.spec`, which imports this
module; the schema names in annotations are not imported here, so there is no cycle)."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any

from .. import evaluate as ev
from .. import io as _io
from ..analysis import Options, get_analysis
from ..config import CalibrationConfig, RunConfig, check_config, validate_config
from ..errors import UserError
from ..labels import NONE, calibration_label, fmt_sparsity, short_model
from ..languages import get_language
from ..masks import parse_pattern
from ..methods import get_method

HASH_VERSION = 1
AXES = ("models", "methods", "sparsities", "calibrations", "seeds")
LABEL_OF_AXIS = {"models": "model", "methods": "method", "sparsities": "sparsity",
                 "calibrations": "calibration", "seeds": "seed"}
DENSE = "dense"
# run settings that describe the machine, not the experiment: kept out of the cell hash
ENV_KEYS = ("device",)
ENV_CAL_KEYS = ("data_dir",)


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




def _axis_values(axis: str, values: list) -> list[tuple[str, dict]]:
    """Each axis value as (label, RunConfig overrides)."""
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
            name = name or short_model(over["model"])
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
            name = name or (str(pat) if pat.structured else fmt_sparsity(float(over.get("sparsity", 0.5))))
        elif axis == "calibrations":
            if v is None:
                over, name = {}, name or NONE
            elif isinstance(v, dict):
                over = {"calibration": v}
                name = name or calibration_label(v)
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




def expand(spec: GridSpec, where: str = "grid", data_dir: str | None = None,
           check_registries: bool = True) -> list[Cell]:
    """All cells of a grid, in a stable order (dense baselines first), duplicates removed."""
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
    known = [f.name for f in dc_fields(Options) if f.name not in ("langs", "data_dir")]
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
    return e.name or ev.result_name(e.task, e.options)


def _norm_label(v: Any) -> str:
    if isinstance(v, float):
        return fmt_sparsity(v)
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
