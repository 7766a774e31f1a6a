"""Evaluation: a registry of tasks, each measured per language (FLORES codes).

``evaluate(model, tokenizer, task, langs)`` returns the result dict (nothing written);
``run_eval(target, task, langs, out)`` loads a run folder (base model + masks) or a model, evaluates
and writes ``results/<task>.json`` atomically. Result contract::

    {"task", "target", "settings", "versions",
     "primary": {"metric", "higher_is_better", "per_lang": {code: v}, "average": v},
     "metrics": {code: {...}}, "per_example": {code: [...]}, "examples": {code: [{id, ...}]},
     "timings_s", "memory"}

Tasks: ``perplexity``, ``translation``, ``xnli``, ``marc``, ``rankc``, ``lm-eval:<task>``; any task
with ``-lrp2`` appended (or ``lrp2=...``) runs under the LRP2 projection (:mod:`.lrp2`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UserError
from ..options import fill, options_model
from ..registry import Registry

log = logging.getLogger(__name__)

LRP2_SUFFIX = "-lrp2"


@dataclass
class Context:
    """What a task sees: the model, its options (defaults filled in) and a per-run cache."""

    model: Any
    tokenizer: Any
    task: str
    data_dir: Any = None
    limit: int | None = None
    seed: int = 0
    batch_size: int = 8
    options: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """``load(ctx, lang) → items`` (cheap, validates data) and ``run(ctx, lang, items) → {value,
    metrics, per_example, examples}``; ``settings(ctx)`` states exactly what was measured."""

    name: str
    metric: str
    higher_is_better: bool
    load: Callable[[Context, str], list]
    run: Callable[[Context, str, list], dict]
    settings: Callable[[Context], dict]
    default_langs: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)
    description: str = ""
    prepare: Callable[[Context, list], None] | None = None  # after loading, before any LRP2 projection


def _load_tasks() -> None:
    from . import tasks as _  # noqa: F401  (registers the built-in tasks)


TASKS: Registry[Task] = Registry("task", _load_tasks, hint=f"or lm-eval:<task>, or <task>{LRP2_SUFFIX}")


def register(task: Task) -> Task:
    return TASKS.register(task.name, task)


def parse_task(name: str) -> tuple[str, dict]:
    """Registry name and implied options: ``xnli-lrp2`` → (xnli, lrp2=auto);
    ``lm-eval:arc_easy`` → (lm-eval, lm_eval_task=arc_easy)."""
    opts: dict = {}
    if name.endswith(LRP2_SUFFIX):
        name, opts["lrp2"] = name[: -len(LRP2_SUFFIX)], "auto"
    if name.startswith("lm-eval:"):
        name, opts["lm_eval_task"] = "lm-eval", name.split(":", 1)[1]
    return name, opts


def get_task(name: str) -> Task:
    base, _ = parse_task(name)
    return TASKS.resolve(base)


def result_name(task: str, options: dict | None = None) -> str:
    """File stem of a result: the task (``:`` → ``_``), with ``-lrp2`` when LRP2 is on."""
    base, implied = parse_task(task)
    opts = {**implied, **(options or {})}
    stem = base if base != "lm-eval" else f"lm-eval_{opts.get('lm_eval_task', '')}"
    stem = stem.replace(":", "_").replace("/", "_").replace("{", "").replace("}", "")
    return stem + (LRP2_SUFFIX if opts.get("lrp2") else "")


def _versions(extra: dict | None = None) -> dict:
    import importlib.metadata as md
    from ..run import versions
    out = versions()
    for pkg in ("sacrebleu", "lm_eval", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out | (extra or {})


def _check_options(task: Task, options: dict) -> dict:
    allowed = dict(task.options) | {"lrp2": None, "lrp2_samples": 100, "lrp2_dev_limit": 150,
                                    "lrp2_pairs": None}
    return fill("task", task.name, options_model(task.name, allowed), options)


def evaluate(model, tokenizer, task: str, langs: Sequence[str] | None = None, data_dir=None,
             limit: int | None = None, seed: int = 0, batch_size: int = 8, **options) -> dict:
    """Evaluate ``task`` per language; returns the result dict (see module doc), writes nothing."""
    from ..data import resolve_data_dir
    from ..languages import get_language
    from ..progress import Timer, peak_memory
    from .scoring import start_token_id
    spec = get_task(task)
    _, implied = parse_task(task)
    opts = _check_options(spec, implied | options)
    start_token_id(tokenizer)  # a tokenizer with bos/eos is required
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be positive (got {limit})")
    codes = [get_language(x).code for x in (langs or spec.default_langs)]
    if not codes:
        raise UserError(f"task {spec.name}: give at least one --lang")
    codes = list(dict.fromkeys(codes))
    ctx = Context(model, tokenizer, task, resolve_data_dir(data_dir), limit, seed, batch_size, opts)
    timer = Timer()
    items = {}
    with timer("load_data"):
        for code in codes:  # validate everything before any model work
            items[code] = spec.load(ctx, code)
            if not items[code]:
                raise UserError(f"task {spec.name}: empty test set for {code} (check --limit and the data files)")
    if spec.prepare is not None:
        with timer("prepare"):
            spec.prepare(ctx, codes)
    lrp2 = _lrp2_setup(ctx, codes, timer) if opts.get("lrp2") else {}
    per_lang: dict[str, dict] = {}
    for code in codes:
        with timer(code):
            if code in lrp2:
                from .lrp2 import projected
                a, b = lrp2[code]["layers"]
                with projected(model, tokenizer, lrp2[code]["mu"], ctx.cache["lrp2_mu_en"], a, b):
                    per_lang[code] = spec.run(ctx, code, items[code])
            else:
                per_lang[code] = spec.run(ctx, code, items[code])
    values = {c: r["value"] for c, r in per_lang.items()}
    finite = [v for v in values.values() if v is not None]
    settings = {"task": task, "langs": codes, "limit": limit, "seed": seed, "batch_size": batch_size,
                "options": {k: v for k, v in opts.items() if not k.startswith("lrp2") or opts.get("lrp2")}}
    settings |= spec.settings(ctx)
    if lrp2:
        settings["lrp2"] = {c: {k: v for k, v in d.items() if k != "mu"} for c, d in lrp2.items()}
    timer.phases["total"] = sum(timer.phases.values())
    return {
        "task": result_name(task, options),
        "target": str(getattr(model, "polyprune_target", None) or getattr(model, "polyprune_source", None)
                      or getattr(model, "name_or_path", "") or type(model).__name__),
        "settings": settings,
        "versions": _versions(ctx.cache.get("versions")),
        "primary": {"metric": ctx.cache.get("primary_metric", spec.metric), "higher_is_better": spec.higher_is_better, "per_lang": values,
                    "average": sum(finite) / len(finite) if finite else None},
        "metrics": {c: r["metrics"] for c, r in per_lang.items()},
        "per_example": {c: r["per_example"] for c, r in per_lang.items()},
        "examples": {c: r["examples"] for c, r in per_lang.items()},
        "timings_s": timer.phases,
        "memory": peak_memory(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _lrp2_setup(ctx: Context, codes: list[str], timer) -> dict:
    """Mean vectors (FLORES calibration lines) and (a, b) per non-English language."""
    from ..data.flores import load_flores
    from ..data.xnli import load_xnli
    from .lrp2 import language_means, search_layers
    o = ctx.options
    n = int(o["lrp2_samples"])
    out = {}
    with timer("lrp2"):
        def mean(code):
            texts = [s for _, s in load_flores(code, "calibration", ctx.data_dir)[:n]]
            return language_means(ctx.model, ctx.tokenizer, texts, ctx.batch_size)
        ctx.cache["lrp2_mu_en"] = mu_en = mean("eng_Latn")
        for code in codes:
            if code == "eng_Latn":
                continue
            mu = mean(code)
            spec = o["lrp2"]
            if spec == "auto":
                dev = load_xnli(code, "dev", ctx.data_dir)[: int(o["lrp2_dev_limit"])]
                pairs = [tuple(int(x) for x in p.split(",")) for p in o["lrp2_pairs"]] if o["lrp2_pairs"] else None
                layers, accs = search_layers(ctx.model, ctx.tokenizer, mu, mu_en, dev, pairs,
                                             o.get("norm", "sum"), ctx.batch_size)
                out[code] = {"layers": list(layers), "search": {"split": "xnli dev", "n": len(dev), "accuracy": accs},
                             "mu": mu}
            else:
                a, b = (int(x) for x in str(spec).split(","))
                out[code] = {"layers": [a, b], "mu": mu}
            out[code]["samples"] = n
            out[code]["source"] = "flores200 calibration lines"
    return out


def run_eval(target: str | Path, task: str, langs: Sequence[str] | None = None, out: str | Path | None = None,
             data_dir=None, limit: int | None = None, seed: int = 0, batch_size: int = 8, dtype: str | None = None,
             device: str | None = None, **options) -> Path:
    """Load ``target`` (run folder or model), evaluate, write ``results/<task>.json``; returns its path.

    Results go to ``RUN/results/`` for a run folder, else to ``out`` (required for a bare model)."""
    from ..loading import load_target
    from ..run import is_run, write_json
    get_task(task)
    _check_options(get_task(task), parse_task(task)[1] | options)
    is_run_dir = Path(target).is_dir() and is_run(target)
    if out is None and not is_run_dir:
        raise UserError(f"{target} is not a run folder: give --out DIR for the results of a bare model")
    from ..data import require_task_data
    require_task_data(parse_task(task)[0], data_dir)  # offline without data: stop before loading a model
    model, tok, run_dir = load_target(str(target), dtype, device)
    model.polyprune_target = str(target)
    res = evaluate(model, tok, task, langs, data_dir, limit, seed, batch_size, **options)
    folder = Path(out) if out is not None else Path(run_dir) / "results"
    from ..io import child
    path = child(folder, res["task"], "result name", ".json")
    write_json(path, res)
    return path


from .significance import compare  # noqa: E402
from . import tasks as _tasks  # noqa: E402,F401  (registers the built-in tasks)

__all__ = ["TASKS", "Context", "Task", "compare", "evaluate", "get_task", "register", "run_eval"]
