"""One registry type for every pluggable kind: methods, refinements, allocations, calibration
recipes, evaluation tasks, analyses and language-aware scores.

A :class:`Registry` is a ``name -> entry`` dict that fills itself on first use (built-ins are
imported lazily, so ``--help`` stays fast), resolves names with one error style (a suggestion for
typos, the full list otherwise), and gives each entry a one-line help for listings."""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError

T = TypeVar("T")


def first_line(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line, without RST quoting
    (a period after an abbreviation such as "et al." or "e.g." or a number does not end it)."""
    para = re.split(r"\n\s*\n", (doc or "").strip())[0]
    text = " ".join(para.split()).replace("``", "")
    for m in re.finditer(r"\.(\s|$)", text):
        if not re.search(r"(\b(al|e\.g|i\.e|Eq|cf|vs)|\d)$", text[: m.start()]):
            return text[: m.start() + 1]
    return text


class Registry(dict, Generic[T]):
    """``name -> entry`` of one ``kind`` (e.g. "method"). ``loader`` fills it once, on first read: a
    function, or the name of a package whose modules register on import (plugins sit in a layer
    above the registry, so the registry names them instead of importing them)."""

    def __init__(self, kind: str, loader: Callable[[], None] | str | None = None, also: tuple[str, ...] = (),
                 hint: str = "") -> None:
        super().__init__()
        self.kind = kind
        self._loader = loader
        self._also = also  # names accepted elsewhere (e.g. allocation "uniform"), listed in errors
        self._hint = hint  # extra spellings named in the error (e.g. "lm-eval:<task>")

    def _load(self) -> None:
        loader, self._loader = self._loader, None
        if isinstance(loader, str):
            importlib.import_module(loader)
        elif loader is not None:
            loader()

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a second, different entry under one name is a programming error."""
        old = dict.get(self, name)
        if old is not None and old is not entry and getattr(old, "fn", old) is not getattr(entry, "fn", entry):
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        dict.__setitem__(self, name, entry)
        return entry

    def resolve(self, name: str) -> T:
        """The entry ``name``, or a UserError naming the closest names."""
        self._load()
        if name in self:
            return dict.__getitem__(self, name)
        choices = sorted([*self._also, *dict.keys(self)])
        close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        extra = f" ({self._hint})" if self._hint else ""
        raise UserError(f"unknown {self.kind} {name!r}: {hint}choose one of {', '.join(choices) or 'none'}{extra}")

    def names(self) -> list[str]:
        self._load()
        return sorted(dict.keys(self))

    def help(self, name: str) -> str:
        """One line describing ``name`` (the entry's ``help``/``description``/``doc`` or docstring)."""
        e = self.resolve(name)
        for attr in ("help", "description", "doc"):
            text = first_line(getattr(e, attr, None))
            if text:
                return text
        return first_line(getattr(e, "__doc__", None) if callable(e) else None)

    def describe(self) -> list[tuple[str, str]]:
        """``[(name, one-line help)]``, sorted: what ``polyprune list`` prints."""
        return [(n, self.help(n)) for n in self.names()]

    # reading the dict loads the built-ins first, so no caller sees a half-filled registry
    def __contains__(self, name: object) -> bool:
        self._load()
        return dict.__contains__(self, name)

    def __getitem__(self, name: str) -> T:
        self._load()
        return dict.__getitem__(self, name)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load()
        return dict.__len__(self)

    def keys(self):
        self._load()
        return dict.keys(self)

    def values(self):
        self._load()
        return dict.values(self)

    def items(self):
        self._load()
        return dict.items(self)

    def get(self, name, default=None):
        self._load()
        return dict.get(self, name, default)


def declared(module: str, fn: str) -> list[str]:
    """The names that ``module`` (a module, or a package and its modules) registers by calling
    ``fn("name", …)`` or ``fn(Entry("name", …))``, read from the source without importing it.

    The registering modules import torch, and ``--help`` must not (it takes 0.4 s instead of 3 s),
    so the CLI's choice lists come from here; a test holds them equal to the loaded registries."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return []
    files = (sorted(f for loc in spec.submodule_search_locations for f in Path(loc).glob("*.py"))
             if spec.submodule_search_locations else [Path(spec.origin)])
    names = set()
    for f in files:
        text = f.read_text(encoding="utf-8")
        if f"{fn}(" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == fn and node.args):
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Call) and arg.args:  # fn(Entry("name", …))
                arg = arg.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
    return sorted(names)


__all__ = ["Registry", "declared", "first_line"]
