"""Collecting a report's data: every finished result (and per-language analysis table) under a
runs folder as labelled entries, grouped into one table per task (seeds averaged), with the best
value per column and significance against the baseline marked."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..evaluate.significance import compare
from ..grid import default_out, is_done, load_grid
from ..labels import dense_labels, run_labels

log = logging.getLogger("polyprune.report")

LABEL_KEYS = ("model", "method", "sparsity", "calibration")
DAGGER = "†"


@dataclass
class Entry:
    """One result file of one cell."""

    labels: dict[str, str]
    seed: str
    result: dict
    folder: Path
    order: int = 0


@dataclass
class Row:
    key: tuple
    labels: dict[str, str]
    results: list[dict] = field(default_factory=list)  # one per seed
    folders: list[Path] = field(default_factory=list)
    order: int = 0
    values: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    marks: dict[str, str] = field(default_factory=dict)
    p_values: dict[str, float | None] = field(default_factory=dict)
    bold: set = field(default_factory=set)
    is_baseline: bool = False

    @property
    def label(self) -> str:
        return " · ".join(v for v in (self.labels.get(k, "-") for k in (*LABEL_KEYS, "variant")) if v and v != "-")


@dataclass
class Table:
    task: str
    metric: str
    higher_is_better: bool
    langs: list[str]
    rows: list[Row]

    @property
    def columns(self) -> list[str]:
        return [*self.langs, "avg"]


# ------------------------------------------------------------------------------------ collection
def _labels_from_config(folder: Path, result: dict) -> tuple[dict, str]:
    """Labels of a plain run folder (``polyprune prune`` + ``eval``) or a bare-model result folder, in
    the scheme of grid cells (:mod:`polyprune.labels`)."""
    cfg_file = folder / "config.yaml"
    if cfg_file.is_file():
        labels = run_labels(yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {})
    else:
        labels = dense_labels(result.get("target") or folder.name)
    seed = labels.pop("seed")
    return labels, seed


def _result_files(folder: Path) -> list[Path]:
    d = folder / "results"
    if d.is_dir():
        return sorted(d.glob("*.json"))
    return sorted(p for p in folder.glob("*.json") if p.name not in ("cell.json", "grid.json", "error.json", "DONE",
                                                                          "record.json"))


def _load_result(path: Path) -> dict | None:
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("skipping unreadable result %s", path)
        return None
    if not isinstance(r, dict) or "primary" not in r or "task" not in r:
        return None
    return r


# per-language tables written by single-run analyses (RUN/analysis/<file>.json, a list of records)
# → tables: (table name, record key, metric, higher is better)
ANALYSIS_TABLES = {"snr_per_lang": [("snr", "snr_db_mean", "snr_db", True),
                                    ("pruning_error", "pruning_error_mean", "pruning_error", False)]}
# the same records inside an analysis' summary file, where runs analysed before the split keep them
_SUMMARY_FALLBACK = {"snr_per_lang": "snr_summary"}


def _analysis_records(folder: Path, fname: str) -> list[dict]:
    for name, inside in ((fname, None), (_SUMMARY_FALLBACK.get(fname), "summary")):
        f = folder / "analysis" / f"{name}.json"
        if not name or not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("skipping unreadable analysis table %s", f)
            continue
        recs = data.get(inside) if inside and isinstance(data, dict) else data
        if isinstance(recs, list):
            return [r for r in recs if isinstance(r, dict) and "lang" in r]
    return []


def _analysis_results(folder: Path) -> list[dict]:
    """Per-language analysis tables of a run folder as result-like dicts (no per-example data: no
    significance markers)."""
    out = []
    for fname, specs in ANALYSIS_TABLES.items():
        recs = _analysis_records(folder, fname)
        for task, key, metric, hib in specs:
            # non-numbers ("inf": SNR of an unpruned model) show as missing
            per_lang = {r["lang"]: (v if isinstance(v := r.get(key), (int, float)) else None) for r in recs}
            if per_lang:
                out.append({"task": task, "primary": {"metric": metric, "higher_is_better": hib,
                                                       "per_lang": per_lang}})
    return out


def table_key(task: str) -> str:
    """Results of one task share a table: ``xnli-lrp2`` is a row variant of ``xnli``."""
    return task[: -len("-lrp2")] if task.endswith("-lrp2") else task


def _variant(stem: str, base: str) -> str:
    if stem == base:
        return "-"
    return stem[len(base) + 1:] if stem.startswith(base + "-") else stem


def resolve_runs_dir(source: str | Path) -> Path:
    """A runs folder, or the runs folder of a grid YAML (``runs/<name>``)."""
    p = Path(source)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        g = load_grid(p)
        out = default_out(p, g.name)
        if not out.is_dir():
            raise UserError(f"grid {g.name!r} has no runs at {out}: run `polyprune run {p}` first or give its --out")
        return out
    if not p.is_dir():
        raise UserError(f"{p} is neither a runs folder nor a grid YAML")
    return p


def collect(source: str | Path) -> list[Entry]:
    """Every finished result under a grid's output folder (or any folder of run folders)."""
    root = resolve_runs_dir(source)
    entries: list[Entry] = []
    gj = root / "grid.json"
    if gj.is_file():
        fp = json.loads(gj.read_text(encoding="utf-8"))
        folders = [(i, root / c["dir"]) for i, c in enumerate(fp.get("cells", []))]
        folders = [(i, f) for i, f in folders if is_done(f)]
    else:
        tables = {*ANALYSIS_TABLES, *_SUMMARY_FALLBACK.values()}
        cands = sorted({p.parent.parent for p in root.glob("**/results/*.json")} |
                       {p.parent.parent for p in root.glob("**/analysis/*.json") if p.stem in tables} |
                       ({root} if (root / "results").is_dir() else set()))
        folders = [(i, f) for i, f in enumerate(cands) if not f.name.startswith(".")]
    for order, folder in folders:
        cell = folder / "cell.json"
        try:
            cell_d = json.loads(cell.read_text(encoding="utf-8")) if cell.is_file() else None
        except (OSError, ValueError):
            log.warning("skipping %s: its cell.json is unreadable", folder)
            continue
        found = [(rf, _load_result(rf)) for rf in _result_files(folder)]
        found += [(folder / "analysis" / f"{r['task']}.json", r) for r in _analysis_results(folder)]
        for rf, res in found:
            if res is None:
                continue
            if cell_d:
                labels = {k: cell_d["labels"].get(k, "-") for k in LABEL_KEYS}
                seed = cell_d["labels"].get("seed", "-")
            else:
                labels, seed = _labels_from_config(folder, res)
            labels["variant"] = _variant(rf.stem, table_key(res["task"]))
            entries.append(Entry(labels, seed, res, folder, order))
    if not entries:
        raise UserError(f"no finished results under {root}: run the grid (polyprune run) or evaluate runs first")
    return entries


# ----------------------------------------------------------------------------------------- tables
def _pick_baseline(rows: list[Row], model: str, baseline: str | None) -> Row | None:
    cands = [r for r in rows if r.labels["model"] == model]
    if baseline is None:
        dense = [r for r in cands if r.labels["method"] == "dense" and r.labels.get("variant", "-") == "-"]
        return dense[0] if dense else None
    want = baseline.strip().lower()
    for r in cands:
        names = {r.label.lower(), r.labels["method"].lower(), *(f.name.lower() for f in r.folders)}
        names |= {" · ".join(v for v in (r.labels[k] for k in LABEL_KEYS[1:]) if v != "-").lower()}
        if want in names:
            return r
    return None


def build_tables(entries: list[Entry], baseline: str | None = None, significance: bool = True) -> list[Table]:
    """Group results by task; average seeds; mark best and significant cells."""
    by_task: dict[str, list[Entry]] = {}
    for e in entries:
        by_task.setdefault(table_key(e.result["task"]), []).append(e)
    tables = []
    for task, ents in by_task.items():
        prim = ents[0].result["primary"]
        langs: list[str] = []
        for e in sorted(ents, key=lambda e: e.labels.get("variant", "-") != "-"):  # variants' languages last
            for lang in e.result["primary"]["per_lang"]:
                if lang not in langs:
                    langs.append(lang)
        rows: dict[tuple, Row] = {}
        for e in sorted(ents, key=lambda e: e.order):
            key = tuple(e.labels.get(k, "-") for k in (*LABEL_KEYS, "variant"))
            row = rows.setdefault(key, Row(key, dict(e.labels), order=e.order))
            row.results.append(e.result)
            row.folders.append(e.folder)
        rows_l = sorted(rows.values(), key=lambda r: (r.order, r.label))
        table = Table(task, prim["metric"], bool(prim["higher_is_better"]), langs, rows_l)
        for r in rows_l:  # a dense variant (e.g. LRP2) is a method of its own in tables and figures
            if r.labels.get("variant", "-") != "-" and r.labels["method"] == "dense":
                r.labels["method"], r.labels["variant"] = r.labels["variant"], "-"
        for r in rows_l:
            for lang in langs:
                vals = [x["primary"]["per_lang"].get(lang) for x in r.results]
                vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
                r.values[lang] = sum(vals) / len(vals) if vals else None
                r.std[lang] = _std(vals)
            have = [r.values[lang] for lang in langs if r.values[lang] is not None]
            r.values["avg"] = sum(have) / len(have) if len(have) == len(langs) and have else None
        _mark(table, baseline, significance)
        tables.append(table)
    return tables


def _std(vals: list[float]) -> float | None:
    if len(vals) < 2:
        return None
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _compare(a: dict, b: dict) -> dict:
    return compare({**a, "task": table_key(a["task"])}, {**b, "task": table_key(b["task"])})


def _mark(table: Table, baseline: str | None, significance: bool) -> None:
    models = list(dict.fromkeys(r.labels["model"] for r in table.rows))
    for model in models:
        rows = [r for r in table.rows if r.labels["model"] == model]
        base = _pick_baseline(table.rows, model, baseline)
        if baseline is not None and base is None:
            raise UserError(f"--baseline {baseline!r} matches no row of model {model} in {table.task}: "
                            f"use one of {', '.join(r.label for r in rows)}")
        if base is not None:
            base.is_baseline = True
        contenders = [r for r in rows if r is not base] or rows
        for col in table.columns:  # best per column among the model's compared rows
            vals = [(r.values.get(col), r) for r in contenders if r.values.get(col) is not None]
            if vals:
                best = (max if table.higher_is_better else min)(v for v, _ in vals)
                for v, r in vals:
                    if v == best:
                        r.bold.add(col)
        if base is None or not significance or not all("per_example" in x for x in base.results):
            continue
        for r in rows:
            if r is base:
                continue
            per_seed = []
            for res in r.results:
                try:
                    per_seed.append(_compare(res, base.results[0]))
                except (UserError, KeyError, ValueError) as e:
                    log.warning("no significance for %s vs %s (%s)", r.label, base.label, e)
                    per_seed = []
                    break
            for lang in table.langs:
                ps = [c.get(lang) for c in per_seed]
                if not ps or any(p is None for p in ps):
                    continue
                r.p_values[lang] = max(p["p_value"] for p in ps)
                if all(p["significant"] for p in ps):
                    r.marks[lang] = DAGGER
