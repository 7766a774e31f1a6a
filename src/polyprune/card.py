"""Hugging Face model cards (``README.md``) for exported runs: what was pruned, how, on which
languages, and what it scored, so the checkpoint explains itself wherever it is uploaded.

Dense baselines come from ``RUN/results/dense/<task>.json`` (e.g. ``polyprune eval BASE --out
RUN/results/dense``) or, for a grid cell, from the grid's finished dense cell of the same model.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

EMBEDDED_BASE = "google/gemma-3-270m"  # the embedded demo model is a GGUF conversion of it
# per-language columns, in this order, when a result has them
METRICS = (("ppl", "perplexity"), ("bpb", "bits/byte"), ("bleu", "BLEU"), ("chrf", "chrF"), ("accuracy", "accuracy"))


def iso_code(code: str) -> str | None:
    """ISO 639-1 (else 639-3) code of a FLORES / ISO language code, for the card's ``language:``."""
    from .errors import UserError
    from .languages import get_language
    try:
        lang = get_language(code)
    except UserError:
        return None
    return lang.iso1 or lang.iso3


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def results_of(run: Path) -> dict[str, dict]:
    """``{file stem: result}`` of every ``results/*.json`` of the run."""
    out = {}
    for f in sorted((Path(run) / "results").glob("*.json")):
        r = _read_json(f)
        if isinstance(r, dict) and "primary" in r:
            out[f.stem] = r
    return out


def dense_results(run: Path, model: str) -> dict[str, dict]:
    """The dense baseline's results: the run folder's own ``results/dense/``, else a finished
    dense cell of the same model beside it in a grid."""
    own = Path(run) / "results" / "dense"
    if own.is_dir():
        return {f.stem: r for f in sorted(own.glob("*.json")) if isinstance(r := _read_json(f), dict) and "primary" in r}
    parent = Path(run).resolve().parent
    for cell in sorted(parent.glob("*/cell.json")):
        c = _read_json(cell)
        if c and c.get("kind") == "dense" and (c.get("config") or {}).get("model") == model \
                and (cell.parent / "DONE").exists():
            return results_of(cell.parent)
    return {}


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def result_table(result: dict, dense: dict | None) -> str:
    """Per-language table of one result (its metrics among METRICS, else the primary one), each
    followed by the dense baseline's value where there is one."""
    metrics = result.get("metrics") or {}
    keys = [(k, label) for k, label in METRICS if any(k in (m or {}) for m in metrics.values())]
    if not keys:
        keys = [(result["primary"]["metric"], result["primary"]["metric"])]
    dmetrics = (dense or {}).get("metrics") or {}
    header = ["language"]
    for _, label in keys:
        header += [label] + ([f"{label} (dense)"] if dense else [])
    rows = []
    for code in result["primary"]["per_lang"]:
        row: list[Any] = [code]
        for k, _ in keys:
            row.append((metrics.get(code) or {}).get(k, result["primary"]["per_lang"][code] if len(keys) == 1 else None))
            if dense:
                row.append((dmetrics.get(code) or {}).get(k))
        rows.append(row)
    return _table(header, rows)


def layer_sparsity(record: dict) -> list[list[Any]]:
    """``[layer, achieved sparsity (mean over its matrices), lowest matrix, highest matrix]``."""
    per: dict[int, list[float]] = {}
    for name, s in (record.get("per_matrix") or {}).items():
        m = re.search(r"\.(\d+)\.", name)
        if m:
            per.setdefault(int(m.group(1)), []).append(float(s))
    return [[i, sum(v) / len(v), min(v), max(v)] for i, v in sorted(per.items())]


def reproduce_command(cfg) -> str:
    """The ``polyprune prune`` line that redoes the run (from its config)."""
    c = cfg.calibration
    parts = ["polyprune prune", f"--model {cfg.model}", f"--method {cfg.method}"]
    if cfg.pattern in ("unstructured", "", None):
        parts.append(f"--sparsity {cfg.sparsity}")
    else:
        parts.append(f"--pattern {cfg.pattern}")
    if c.recipe:
        parts.append(f"--calibration {c.recipe}")
    if c.file:
        parts.append(f"--calibration-file {c.file}")
    if c.langs:
        parts.append(f"--lang {','.join(c.langs)}")
    for opt, v in (("--target-lang", c.target_lang), ("--k", c.k), ("--contrast", c.contrast),
                   ("--contrast-lang", c.contrast_lang), ("--allocation", cfg.allocation), ("--refine", cfg.refine),
                   ("--data-dir", c.data_dir), ("--dtype", cfg.dtype), ("--activation-dtype", cfg.activation_dtype)):
        if v is not None:
            parts.append(f"{opt} {v}")
    parts += [f"--nsamples {c.nsamples}", f"--seqlen {c.seqlen}", f"--seed {cfg.seed}"]
    if cfg.keep_dense_layers:
        parts.append(f"--keep-dense-layers {','.join(map(str, cfg.keep_dense_layers))}")
    if not cfg.sequential:
        parts.append("--non-sequential")
    if cfg.count_pads:
        parts.append("--count-pads")
    parts += [f"-o {k}={json.dumps(v)}" for k, v in sorted(cfg.method_options.items())]
    parts += [f"--allocation-option {k}={json.dumps(v)}" for k, v in sorted(cfg.allocation_options.items())]
    parts += [f"--refine-option {k}={json.dumps(v)}" for k, v in sorted(cfg.refine_options.items())]
    if c.options:
        parts.append(f"# calibration options (config.yaml): {json.dumps(c.options, sort_keys=True)}")
    return " ".join(parts + ["--out RUN"])


def render_card(run: Path, cfg, fmt: str, report: dict) -> str:
    """The model card (YAML front matter + markdown body) of an export of ``run``."""
    import polyprune
    run = Path(run)
    record = _read_json(run / "record.json") or {}
    results = results_of(run)
    dense = dense_results(run, cfg.model)
    cal = record.get("calibration") or {}
    per_set = cal.get("tokens_per_set_and_language") or {}
    eval_langs = [c for r in results.values() for c in r["primary"]["per_lang"]]
    langs: list[str] = []
    for code in [*cfg.calibration.langs, *(lg for s in per_set.values() for lg in s), *eval_langs]:
        iso = iso_code(code)
        if iso and iso not in langs:
            langs.append(iso)
    base = EMBEDDED_BASE if cfg.model in ("embedded", "gemma-3-270m") else cfg.model
    front = {"base_model": base, "library_name": "polyprune", "tags": ["pruned", "polyprune", cfg.method],
             "language": langs, "pipeline_tag": "text-generation"}
    out = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", ""]
    achieved = record.get("achieved_sparsity")
    title = f"{Path(base).name} pruned with {cfg.method}"
    out += [f"# {title}", "",
            f"`{base}` pruned by [polyprune](https://pypi.org/project/polyprune/) {polyprune.__version__}"
            + (f" ({cfg.method}, {cfg.pattern}, achieved sparsity {achieved:.4f})" if achieved is not None else "")
            + f", exported as `{fmt}`.", ""]
    if cfg.model in ("embedded", "gemma-3-270m"):
        out += [f"The base is polyprune's embedded model: the Q4_K_M GGUF of `{EMBEDDED_BASE}` converted to "
                "a Hugging Face checkpoint.", ""]
    out += ["## Loading", ""]
    out += [f"- {loader}: `{line}`" for loader, line in report.get("load", {}).items()]
    if "ratio_fp32" in report:
        out += ["", f"Weights on disk: {report['on_disk_bytes'] / 2**20:.1f} MiB = {report['ratio_fp32']:.3f}× "
                    f"the dense fp32 checkpoint, {report['ratio_bf16']:.3f}× bf16."]
    settings = [["method", cfg.method], ["target sparsity", cfg.sparsity if cfg.pattern == "unstructured" else "-"],
                ["pattern", cfg.pattern], ["achieved sparsity", achieved],
                ["pruned / prunable weights", f"{record.get('pruned_weights', '-')} / {record.get('prunable_weights', '-')}"],
                ["method options", json.dumps(cfg.method_options, sort_keys=True) if cfg.method_options else "-"],
                ["allocation", cfg.allocation or "uniform"],
                ["allocation options", json.dumps(cfg.allocation_options, sort_keys=True) if cfg.allocation_options else "-"],
                ["refinement", cfg.refine or "-"],
                ["layers kept dense", ", ".join(map(str, cfg.keep_dense_layers)) or "-"],
                ["sequential", cfg.sequential], ["pad tokens in statistics", cfg.count_pads], ["seed", cfg.seed],
                ["compute dtype", cfg.dtype or "auto"], ["base model hash", f"`{cfg.base_hash}`" if cfg.base_hash else "-"],
                ["export format", fmt]]
    out += ["", "## Pruning settings", "", _table(["setting", "value"], settings), ""]
    c = cfg.calibration
    out += ["## Calibration", ""]
    if c.recipe or c.file:
        out += [f"Recipe `{c.recipe or 'text file'}`" + (f" ({c.file})" if c.file else "")
                + f", {cal.get('samples', c.nsamples)} samples of {c.seqlen} tokens, {cal.get('tokens', '-')} tokens "
                f"in all.", ""]
        rows = [[s, lg, n] for s, per in per_set.items() for lg, n in per.items()]
        if rows:
            out += [_table(["set", "language", "tokens"], rows), ""]
        elif c.langs:
            out += [f"Languages: {', '.join(c.langs)}.", ""]
    else:
        out += ["None: the method uses no calibration data.", ""]
    layers = layer_sparsity(record)
    if layers:
        out += ["## Sparsity per layer", "", _table(["layer", "sparsity", "lowest matrix", "highest matrix"], layers), ""]
    out += ["## Results", ""]
    if not results:
        out += ["No evaluations in the run folder (`polyprune eval RUN --task …` adds them).", ""]
    for name, r in results.items():
        d = dense.get(name)
        out += [f"### {name}", "", f"Primary metric `{r['primary']['metric']}` "
                f"({'higher' if r['primary'].get('higher_is_better') else 'lower'} is better); settings: "
                f"limit {_fmt(r.get('settings', {}).get('limit'))}, seed {_fmt(r.get('settings', {}).get('seed'))}"
                + ("; dense baseline from the same evaluation of the base model." if d else "; no dense baseline found."),
                "", result_table(r, d), ""]
    out += ["## Reproduce", "", "```bash", reproduce_command(cfg),
            f"polyprune export RUN --format {fmt}" + (f" --dtype {report['dtype']}" if report.get("dtype") else "")
            + " --out OUT", "```", "",
            "Pruned with " + ", ".join(f"{k} {v}" for k, v in versions_of(run).items()) + "; "
            f"exported with polyprune {polyprune.__version__}.", ""]
    return "\n".join(out).rstrip() + "\n"


def versions_of(run: Path) -> dict[str, str]:
    """Library versions config.yaml recorded at prune time."""
    try:
        data = yaml.safe_load((Path(run) / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return data.get("versions") or {}


def write_card(path: Path, run: Path, cfg, fmt: str, report: dict) -> None:
    Path(path).write_text(render_card(run, cfg, fmt, report), encoding="utf-8")
