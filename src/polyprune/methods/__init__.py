"""Pruning methods: a registry of pure functions ``(W [out, in], stats, spec) -> MethodResult``.

``W`` is a float32 copy of the weight as [out_features, in_features]; ``stats`` maps calibration
set names to :class:`polyprune.stats.ModuleStats`; no hooks or models here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import UserError
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

    def opt(self, key: str, default: Any) -> Any:
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
    options: dict[str, Any] = field(default_factory=dict)  # option -> default (documented)
    doc: str = ""

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs)


def _load_builtin() -> None:
    import importlib
    import pkgutil
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


METHODS: Registry[Method] = Registry("method", _load_builtin)


def register(name: str, needs=(), sets=("target",), updates_weights=False, options=None):
    """Decorator: register a pruning method under ``name``."""
    def deco(fn):
        METHODS.register(name, Method(name, fn, frozenset(needs), tuple(sets) if needs else (),
                                      updates_weights, dict(options or {}), (fn.__doc__ or "").strip()))
        return fn
    return deco


def get_method(name: str) -> Method:
    return METHODS.resolve(name)


def check_options(method: Method, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        valid = ", ".join(sorted(method.options)) or "none"
        raise UserError(f"method {method.name!r} has no option {unknown[0]!r}: valid options are {valid}")


@dataclass
class Refiner:
    """A mask refinement applied after any method's initial mask: ``fn(W, stats, spec, kept) -> MethodResult``."""

    name: str
    fn: Callable[..., MethodResult]
    needs: frozenset = frozenset()
    options: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


REFINERS: Registry[Refiner] = Registry("refinement", _load_builtin)


def register_refiner(name: str, needs=(), options=None):
    """Decorator: register a mask refinement (e.g. DSnoT) under ``name``."""
    def deco(fn):
        REFINERS.register(name, Refiner(name, fn, frozenset(needs), dict(options or {}), (fn.__doc__ or "").strip()))
        return fn
    return deco


def get_refiner(name: str) -> Refiner:
    return REFINERS.resolve(name)


__all__ = ["METHODS", "Method", "MethodResult", "REFINERS", "Refiner", "Spec", "check_options", "get_method",
           "get_refiner", "register", "register_refiner"]
