"""``polyprune list KIND``: what exists, read from the registries themselves (so it cannot drift)."""
from __future__ import annotations

import re
from enum import Enum

import typer

from ..cli import app, examples


class Kind(str, Enum):
    methods = "methods"
    recipes = "recipes"
    tasks = "tasks"
    analyses = "analyses"
    allocations = "allocations"
    refinements = "refinements"
    languages = "languages"
    formats = "formats"


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line, without RST quoting."""
    para = re.split(r"\n\s*\n", (doc or "").strip())[0]
    text = " ".join(para.split()).replace("``", "")
    for m in re.finditer(r"\.(\s|$)", text):
        if not re.search(r"(\b(al|e\.g|i\.e|Eq|cf|vs)|\d)$", text[: m.start()]):
            return text[: m.start() + 1]
    return text


_FORMAT_HELP = {"compressed-tensors": "pick the compressed-tensors layout from the run (quantised and/or sparse)",
                "dense": "plain dense safetensors with the masks applied"}


def _format_help() -> dict[str, str]:
    """One line per export format, from the bullet list of ``polyprune.formats``' docstring."""
    from .. import formats
    found = {k: " ".join(v.split()).replace("``", "") for k, v in
             re.findall(r"^- ``([\w-]+)``: (.+?)(?=\n- |\n\n|\Z)", formats.__doc__ or "", flags=re.M | re.S)}
    return {name: (found.get(name) or _FORMAT_HELP.get(name, "")).rstrip(";,. ") for name in formats.FORMATS}


def entries(kind: str) -> list[tuple[str, str]]:
    """``(name, one line of help)`` for every registered ``kind``, in registry order."""
    if kind in ("methods", "refinements"):
        from ..methods import METHODS, REFINERS, _load_builtin
        _load_builtin()
        reg = METHODS if kind == "methods" else REFINERS
        return [(n, first_sentence(m.doc)) for n, m in reg.items()]
    if kind == "recipes":
        from .. import calibrations  # noqa: F401  (registers the recipes)
        from ..calibration import RECIPES
        return [(n, first_sentence(f.__doc__)) for n, f in RECIPES.items()]
    if kind == "tasks":
        from ..evaluate import TASKS
        return [(f"{n}:<name>" if n == "lm-eval" else n, t.description + (" (e.g. --task lm-eval:arc_easy)"
                 if n == "lm-eval" else "")) for n, t in TASKS.items()]
    if kind == "analyses":
        from ..analysis import ANALYSES
        return [(n, a.help) for n, a in ANALYSES.items()]
    if kind == "allocations":
        from ..allocation import ALLOCATIONS
        return [("uniform", "the same sparsity in every layer (default)")] + \
               [(n, first_sentence(a.doc)) for n, a in ALLOCATIONS.items()]
    if kind == "languages":
        from ..languages import LANGUAGES
        return [(lang.code, f"{lang.name}" + (f" ({lang.iso1})" if lang.iso1 else ""))
                for lang in sorted(LANGUAGES.values(), key=lambda x: x.code)]
    if kind == "formats":
        return list(_format_help().items())
    raise ValueError(kind)


@app.command("list", epilog=examples("polyprune list methods", "polyprune list tasks",
                                     "polyprune list languages | grep -i swahili"))
def list_cmd(kind: Kind = typer.Argument(..., metavar="KIND", help="What to list: methods, recipes, tasks, analyses, "
                                                    "allocations, refinements, languages or formats.")) -> None:
    """List the registered methods, calibration recipes, tasks, analyses, allocations, refinements,
    languages or export formats, one line of help each."""
    rows = entries(kind.value)
    width = max(len(n) for n, _ in rows)
    for name, text in rows:
        typer.echo(f"{name.ljust(width)}  {text}".rstrip())
