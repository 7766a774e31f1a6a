"""The grid file's schema (pydantic, unknown keys refused with the valid ones named) and its
loading: YAML → validated :class:`GridSpec` → :class:`Grid` of expanded cells."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from .. import io as _io
from ..errors import UserError
from ..io import child, read_yaml
from .expand import HASH_VERSION, Cell, expand

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
    return child(Path("runs"), name, f"{grid_path}: grid name")


def load_grid(path: str | Path) -> Grid:
    """Read and fully validate a grid YAML file (nothing is started)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"grid file {p} does not exist: give a YAML grid (see recipes/)")
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
