"""``polyprune list KIND``: what exists, read from the registries themselves (so it cannot drift)."""
from __future__ import annotations

from enum import Enum

import typer

from ..cli import app, examples
from ..registry import declared


class Kind(str, Enum):
    methods = "methods"
    recipes = "recipes"
    tasks = "tasks"
    analyses = "analyses"
    allocations = "allocations"
    refinements = "refinements"
    languages = "languages"
    formats = "formats"


# kind -> (module, registry, where its entries are registered, with which function): the registry is
# imported only for the kind asked for, and --help reads the names from the source (``--help`` stays fast)
REGISTRIES = {"methods": ("polyprune.methods", "METHODS", "polyprune.methods", "register"),
              "refinements": ("polyprune.methods", "REFINERS", "polyprune.methods", "register_refiner"),
              "recipes": ("polyprune.calibration", "RECIPES", "polyprune.calibrations", "register_recipe"),
              "tasks": ("polyprune.evaluate", "TASKS", "polyprune.evaluate", "register"),
              "analyses": ("polyprune.analysis", "ANALYSES", "polyprune.analysis", "register_analysis"),
              "allocations": ("polyprune.allocation", "ALLOCATIONS", "polyprune.allocation", "register_allocation")}


def choices(kind: str) -> str:
    """The registered names of ``kind`` for an option's help, without importing the registry
    (``registry.declared``; a test holds them equal to the loaded registry)."""
    _, _, source, fn = REGISTRIES[kind]
    names = declared(source, fn)
    if kind == "tasks":
        return ", ".join(n for n in names if n != "lm-eval") + ", or lm-eval:<name> for any lm-eval task"
    if kind == "allocations":
        return ", ".join(["uniform (default)", *names])
    return ", ".join(names)

_FORMAT_HELP = {
    "auto": "dense for a run that is not quantised, pack-quantized for a quantised one (alias compressed-tensors)",
    "dense": "standard Hugging Face checkpoint with the pruned zeros in place; transformers and vLLM load it (alias hf)",
    "pack-quantized": "compressed-tensors packed int2-int8 weights, e.g. W4A16 (codes in int32, group scales); transformers and vLLM load it",
    "int-quantized": "compressed-tensors W8A16 (int8 codes, per-row scales); transformers and vLLM load it",
    "sparse-bitmask": "compact polyprune archive (kept values + bit mask); only polyprune reads it back",
    "sparse-24-bitmask": "compact polyprune archive of a 2:4 run; only polyprune reads it back",
}


def _format_help() -> dict[str, str]:
    """One line per export format (a new format without a line here fails the listing test)."""
    from .. import formats
    return {name: _FORMAT_HELP.get(name, "") for name in formats.FORMATS}


def entries(kind: str) -> list[tuple[str, str]]:
    """``(name, one line of help)`` for every registered ``kind``, sorted by name."""
    if kind in REGISTRIES:
        module, attr, _, _ = REGISTRIES[kind]
        import importlib
        reg = getattr(importlib.import_module(module), attr)
        rows = reg.describe()
        if kind in ("methods", "refinements", "allocations"):  # each entry's options model, with defaults
            from ..options import describe
            rows = [(n, f"{h} [{describe(reg[n].options_model)}]" if reg[n].options else h) for n, h in rows]
        if kind == "tasks":
            rows = [("lm-eval:<name>", f"{h} (e.g. --task lm-eval:arc_easy)") if n == "lm-eval" else (n, h)
                    for n, h in rows]
        if kind == "allocations":
            rows = [("uniform", "the same sparsity in every layer (default)")] + rows
        return rows
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
