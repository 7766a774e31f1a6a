"""lm-eval bridge: any lm-eval (0.4.x) task on the in-memory (pruned) model.

The model is wrapped with ``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=...)``
and run through ``lm_eval.simple_evaluate``. Tasks come from lm-eval's registry (hub data: needs
network) or from local files: ``include=DIR`` registers every task YAML in DIR
(``TaskManager(include_path=DIR)``), and :func:`local_task_yaml` writes such a YAML for a local
JSON-lines file (``dataset_path: json``, ``dataset_kwargs.data_files``, absolute paths), which
is how tasks run offline.

Per language: the task name may contain ``{flores}``, ``{iso1}``, ``{iso3}`` or ``{xnli}``,
filled for each ``--lang`` (e.g. ``belebele_{flores}``); otherwise every language runs the
same task and is keyed by the given language (default English).
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from ..errors import UserError
from ..languages import get_language
from . import Context, Task, register

log = logging.getLogger(__name__)


def local_task_yaml(folder: str | Path, name: str, data_file: str | Path, doc_to_text: str, doc_to_choice: str,
                    doc_to_target: str, split: str = "validation", metric: str = "acc",
                    target_delimiter: str = " ") -> Path:
    """Write ``folder/<name>.yaml``: a multiple-choice task over a local JSON-lines file."""
    import yaml
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"task": name, "dataset_path": "json",
           "dataset_kwargs": {"data_files": {split: str(Path(data_file).resolve())}},
           "output_type": "multiple_choice", "test_split": split, "doc_to_text": doc_to_text,
           "doc_to_choice": doc_to_choice, "doc_to_target": doc_to_target, "target_delimiter": target_delimiter,
           "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}],
           "metadata": {"version": 1.0}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def task_for(template: str, code: str) -> str:
    lang = get_language(code)
    try:
        return template.format(flores=lang.code, iso1=lang.iso1 or lang.iso3, iso3=lang.iso3,
                               xnli=lang.xnli or lang.iso1 or lang.iso3)
    except (KeyError, IndexError) as e:
        raise UserError(f"lm-eval task {template!r}: unknown placeholder {e}; use {{flores}} {{iso1}} {{iso3}} {{xnli}}")


_MANAGERS: dict[tuple, object] = {}


def _task_manager(include: str | None, defaults: bool):
    """One ``TaskManager`` per process and task folder (keyed by its YAMLs' names, sizes and mtimes):
    lm-eval 0.4.13 indexes its ~14,700 bundled task YAMLs in 5.7 s here, so a grid or report that
    evaluates many runs in one process pays that once."""
    from lm_eval.tasks import TaskManager
    stats = ((str(f), f.stat()) for f in Path(include).rglob("*.yaml")) if include else ()
    stamp = tuple(sorted((name, st.st_mtime_ns, st.st_size) for name, st in stats))
    key = (include, defaults, stamp)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=include, include_defaults=defaults)
    return _MANAGERS[key]


def _is_plain_task(tm, name: str) -> bool:
    """``name`` is a task (not a group or tag over other tasks) in ``tm``'s index."""
    entry = getattr(tm, "task_index", {}).get(name)
    kind = getattr(entry, "kind", None) or (entry.get("type") if isinstance(entry, dict) else None)
    return str(getattr(kind, "name", kind)).lower() == "task"


def _manager(ctx: Context, name: str):
    """The task index for ``name``: a task defined in ``include=DIR`` needs only that folder's index
    (1 ms instead of 5.7 s); anything else (bundled tasks, groups) the full one."""
    try:
        import lm_eval.tasks  # noqa: F401
    except ImportError:
        raise UserError("lm-eval is not installed: pip install 'polyprune[eval]'") from None
    inc = ctx.options.get("include")
    if inc and not Path(inc).is_dir():
        raise UserError(f"include={inc}: not a folder of lm-eval task YAMLs")
    inc = str(Path(inc).resolve()) if inc else None
    if inc:
        local = _task_manager(inc, False)
        if _is_plain_task(local, name):
            return local
    return _task_manager(inc, True)


def _load(ctx: Context, code: str) -> list:
    template = ctx.options.get("lm_eval_task")
    if not template:
        raise UserError("lm-eval: name the task, e.g. --task lm-eval:arc_easy (list them: polyprune list tasks)")
    name = task_for(template, code)
    tm = _manager(ctx, name)
    if name not in tm.all_tasks:
        raise UserError(f"lm-eval task {name!r} not found (local YAMLs: include=DIR; lm-eval {_lm_eval_version()})")
    path = _dataset_path(tm, name)
    if path is not None and path not in LOCAL_BUILDERS and not Path(path).exists():
        from ..data.hub import require_hub  # offline: one line now, not datasets' retries later
        require_hub(f"lm-eval task {name}'s dataset {path}", "point a local task YAML at a JSON file (include=DIR)")
    return [name]


LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def _dataset_path(tm, name: str) -> str | None:
    """The task YAML's ``dataset_path`` when lm-eval's index knows it without building the task."""
    try:
        cfg = tm.task_index[name].cfg or {}
    except (AttributeError, KeyError, TypeError):
        return None
    v = cfg.get("dataset_path") if isinstance(cfg, dict) else None
    return v if isinstance(v, str) else None


def _lm_eval_version() -> str:
    import importlib.metadata as md
    try:
        return md.version("lm_eval")
    except md.PackageNotFoundError:
        return "not installed"


def _hflm(ctx: Context):
    if "lm_eval_lm" not in ctx.cache:
        from lm_eval.models.huggingface import HFLM
        ctx.cache["lm_eval_lm"] = HFLM(pretrained=ctx.model, tokenizer=ctx.tokenizer, batch_size=ctx.batch_size,
                                       max_length=ctx.options.get("max_length"))
    return ctx.cache["lm_eval_lm"]


def _run(ctx: Context, code: str, items: list) -> dict:
    import lm_eval
    name = items[0]
    o = ctx.options
    try:
        # lm-eval passes disable=False to its tqdm bars, which overrides TQDM_DISABLE: send them to a
        # buffer (log records keep their own stream, so errors and warnings still show)
        with contextlib.redirect_stderr(io.StringIO()):
            res = lm_eval.simple_evaluate(model=_hflm(ctx), tasks=[name], task_manager=_manager(ctx, name),
                                          limit=ctx.limit,
                                          num_fewshot=o.get("num_fewshot"), log_samples=True,
                                          random_seed=ctx.seed, numpy_random_seed=ctx.seed,
                                          torch_random_seed=ctx.seed, fewshot_random_seed=ctx.seed,
                                          bootstrap_iters=0, apply_chat_template=bool(o.get("chat_template")))
    except Exception as e:  # hub data offline, malformed YAML …
        if "Offline" in type(e).__name__ or "offline" in str(e).lower():
            raise UserError(f"lm-eval task {name}: its data is on the hub and this machine is offline; "
                            f"point a local task YAML at a JSON file (include=DIR)") from None
        raise
    metrics = {k: v for k, v in res["results"][name].items() if isinstance(v, (int, float)) and k != "alias"}
    metric = o.get("metric") or "acc"
    key = next((k for k in metrics if k.split(",")[0] == metric), None)
    if key is None:
        raise UserError(f"lm-eval task {name}: no metric {metric!r} (has {', '.join(metrics)}); set metric=...")
    ctx.cache["primary_metric"] = "accuracy" if metric == "acc" else metric
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    per = [float(s[metric]) for s in samples]
    examples = [{"id": s["doc_id"], "label": s.get("target"), "prediction": None,
                 "scores": [r[0] if isinstance(r, (list, tuple)) else r for r in s.get("filtered_resps", [])],
                 metric: float(s[metric])} for s in samples]
    for e in examples:  # argmax for multiple choice (log-likelihoods)
        if e["scores"] and all(isinstance(x, (int, float)) for x in e["scores"]):
            e["prediction"] = max(range(len(e["scores"])), key=lambda j: e["scores"][j])
    ctx.cache.setdefault("lm_eval_configs", {})[name] = res.get("configs", {}).get(name)
    return {"value": metrics[key], "metrics": metrics | {"n": len(samples), "lm_eval_task": name},
            "per_example": per, "examples": examples}


def _settings(ctx: Context) -> dict:
    o = ctx.options
    return {"lm_eval_version": _lm_eval_version(), "lm_eval_task": o.get("lm_eval_task"),
            "include": str(Path(o["include"]).resolve()) if o.get("include") else None,
            "num_fewshot": o.get("num_fewshot"), "metric": o.get("metric") or "acc",
            "chat_template": bool(o.get("chat_template")),
            "model_wrapper": "lm_eval.models.huggingface.HFLM(pretrained=<in-memory model>, tokenizer=...)",
            "task_configs": {k: _jsonable(v) for k, v in ctx.cache.get("lm_eval_configs", {}).items()}}


def _jsonable(v):
    import json
    try:
        json.dumps(v)
        return v
    except TypeError:
        return json.loads(json.dumps(v, default=str))


register(Task("lm-eval", "accuracy", True, _load, _run, _settings, ("eng_Latn",),
              {"lm_eval_task": None, "include": None, "num_fewshot": None, "metric": None, "max_length": None,
               "chat_template": False},
              "any lm-eval task on the in-memory model (HFLM wrapper)"))
