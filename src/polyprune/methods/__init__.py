"""Pruning methods: a registry of pure functions ``(W [out, in], stats, spec) -> MethodResult``.

``W`` is a float32 copy of the weight as [out_features, in_features]; ``stats`` maps calibration
set names to :class:`polyprune.stats.ModuleStats`; no hooks or models here.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pydantic import BaseModel

from .. import options as _options
from ..masks import Pattern
from ..registry import Registry


@dataclass
class Spec:
    """What to prune: target sparsity (this matrix), pattern, method options, and the matrix name."""

    sparsity: float
    pattern: Pattern = field(default_factory=Pattern)
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    seed: int = 0

    def opt(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass
class MethodResult:
    kept: torch.Tensor  # bool [out, in], True = kept
    weight: torch.Tensor | None = None  # new [out, in] weight for methods that update weights
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Method:
    name: str
    fn: Callable[..., MethodResult]
    needs: frozenset = frozenset()  # statistics kinds, see polyprune.stats.KINDS
    sets: tuple[str, ...] = ()  # calibration sets required (e.g. target, contrast)
    updates_weights: bool = False
    options_model: type[BaseModel] = _options.NoOptions  # typed options with their defaults
    doc: str = ""

    @property
    def options(self) -> dict[str, Any]:
        """``{option: default}``, from the options model."""
        return _options.defaults(self.options_model)

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs)

    def fill_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """``options`` validated, every default filled (one line naming a bad option)."""
        return _options.fill("method", self.name, self.options_model, options)


def _load_builtin() -> None:
    import importlib
    import pkgutil
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


METHODS: Registry[Method] = Registry("method", _load_builtin)


def _with_options(fn: Callable, kind: str, name: str, model: type[BaseModel]) -> Callable:
    """``fn`` called with ``spec.options`` validated and complete, so method code reads
    ``spec.options[key]`` and never restates a default."""
    @functools.wraps(fn)
    def call(W, stats, spec: Spec, *args):
        return fn(W, stats, dataclasses.replace(spec, options=_options.fill(kind, name, model, spec.options)), *args)
    return call


def register(name: str, needs=(), sets=("target",), updates_weights=False, options=None):
    """Decorator: register a pruning method under ``name``; ``options``: its options model
    (a :class:`polyprune.options.Strict` subclass whose fields carry the defaults)."""
    def deco(fn):
        model = _options.options_model(name, options)
        call = _with_options(fn, "method", name, model)
        METHODS.register(name, Method(name, call, frozenset(needs), tuple(sets) if needs else (),
                                      updates_weights, model, (fn.__doc__ or "").strip()))
        return call
    return deco


def get_method(name: str) -> Method:
    return METHODS.resolve(name)


@dataclass
class Refiner:
    """A mask refinement applied after any method's initial mask: ``fn(W, stats, spec, kept) -> MethodResult``."""

    name: str
    fn: Callable[..., MethodResult]
    needs: frozenset = frozenset()
    options_model: type[BaseModel] = _options.NoOptions
    doc: str = ""

    @property
    def options(self) -> dict[str, Any]:
        return _options.defaults(self.options_model)

    def fill_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        return _options.fill("refinement", self.name, self.options_model, options)


REFINERS: Registry[Refiner] = Registry("refinement", _load_builtin)


def register_refiner(name: str, needs=(), options=None):
    """Decorator: register a mask refinement (e.g. DSnoT) under ``name``."""
    def deco(fn):
        model = _options.options_model(name, options)
        call = _with_options(fn, "refinement", name, model)
        REFINERS.register(name, Refiner(name, call, frozenset(needs), model, (fn.__doc__ or "").strip()))
        return call
    return deco


def get_refiner(name: str) -> Refiner:
    return REFINERS.resolve(name)


def stat_kinds(method: str, refine: str | None = None) -> frozenset:
    """The statistics kinds a method and its refinement read (what the memory plan counts)."""
    return frozenset(get_method(method).needs) | (get_refiner(refine).needs if refine else frozenset())


__all__ = ["METHODS", "Method", "MethodResult", "REFINERS", "Refiner", "Spec", "get_method",
           "get_refiner", "register", "register_refiner", "stat_kinds"]
