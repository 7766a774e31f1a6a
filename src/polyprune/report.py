"""Paper-style reports from evaluated cells: tables (CSV, Markdown, LaTeX) and figures.

One table per task: rows = model × method × sparsity × calibration (seeds averaged), columns =
evaluation languages + average; per model, the best value of each column among the rows compared
with the baseline is bold and ``†`` marks
a value significantly different from the model's baseline (the dense cell, or ``baseline=``) at
p < 0.1 by the evaluation suite's paired bootstrap (with several seeds: significant in every seed).
Figures: per-language bars of the primary metric against the calibration, and heatmaps of
calibration × evaluation language (each cell: value and its change vs the baseline in %, coloured
by that change, red = worse); languages are named in English in every figure.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

log = logging.getLogger(__name__)

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
    """Labels of a plain run folder (``polyprune prune`` + ``eval``) or a bare-model result folder."""
    from .grid import NONE, _calibration_label, _fmt_sparsity, _short_model
    cfg_file = folder / "config.yaml"
    if cfg_file.is_file():
        import yaml
        c = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
        pat = c.get("pattern", "unstructured")
        sp = pat if pat not in (None, "unstructured") else _fmt_sparsity(float(c.get("sparsity", 0.5)))
        cal = c.get("calibration") or {}
        return ({"model": _short_model(c.get("model", "?")), "method": c.get("method", "?"), "sparsity": sp,
                 "calibration": _calibration_label(cal) if (cal.get("recipe") or cal.get("file")) else NONE},
                str(c.get("seed", 0)))
    return ({"model": _short_model(result.get("target") or folder.name), "method": "dense", "sparsity": NONE,
             "calibration": NONE}, NONE)


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
        from .grid import default_out, load_grid
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
    from .grid import is_done
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
    from .evaluate.significance import compare
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


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if abs(v) >= 1000:
        return f"{v:.0f}"
    if v != 0 and abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def _label_columns(table: Table) -> list[str]:
    """Label columns that vary (model, method, sparsity, calibration, variant)."""
    keys = [*LABEL_KEYS, "variant"]
    keep = [k for k in keys if len({r.labels.get(k, "-") for r in table.rows} - {"-"}) > 1
            or (k == "calibration" and any(r.labels.get(k, "-") != "-" for r in table.rows))]
    return keep or ["method"]


def _seeds_note(table: Table) -> str:
    n = max(len(r.results) for r in table.rows)
    return f"; mean of {n} seeds" if n > 1 else ""


def table_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = [*LABEL_KEYS, "variant"]
    w.writerow([*keys, "seeds", *table.columns, *(f"{c}_std" for c in table.langs), *(f"{c}_p" for c in table.langs),
                "baseline"])
    for r in table.rows:
        w.writerow([r.labels.get(k, "-") for k in keys] + [len(r.results)] +
                   ["" if r.values.get(c) is None else f"{r.values[c]:.6g}" for c in table.columns] +
                   ["" if r.std.get(c) is None else f"{r.std[c]:.4g}" for c in table.langs] +
                   ["" if r.p_values.get(c) is None else f"{r.p_values[c]:.4g}" for c in table.langs] +
                   [int(r.is_baseline)])
    return buf.getvalue()


def _caption(table: Table) -> str:
    arrow = "higher is better" if table.higher_is_better else "lower is better"
    tested = any("per_example" in x for r in table.rows for x in r.results)
    sig = (f"; {DAGGER}: p < 0.1 against the model's baseline (paired bootstrap)" if tested else
           " (no per-example scores: no significance test)")
    return (f"{table.task}: {table.metric} ({arrow}) per evaluation language{_seeds_note(table)}. Bold: best per "
            f"column among a model's rows other than its baseline{sig}.")


def table_markdown(table: Table) -> str:
    cols = _label_columns(table)
    head = [c.capitalize() for c in cols] + [_lang_short(c) for c in table.langs] + ["Avg."]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(cols) + ["---:"] * len(table.columns)) + "|"]
    for r in table.rows:
        cells = [r.labels.get(k, "-") + (" (baseline)" if r.is_baseline and k == cols[-1] else "") for k in cols]
        for c in table.columns:
            s = fmt(r.values.get(c)) + r.marks.get(c, "")
            cells.append(f"**{s}**" if c in r.bold else s)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _caption(table) + "\n"


def _tex_escape(s: str) -> str:
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "·": r"$\cdot$", ">": r"$\to$",
           "θ": r"$\theta$", "†": r"$^\dagger$"}
    return "".join(rep.get(ch, ch) for ch in s)


def table_latex(table: Table) -> str:
    cols = _label_columns(table)
    spec = "l" * len(cols) + "r" * len(table.columns)
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join([_tex_escape(c.capitalize()) for c in cols] + [_tex_escape(_lang_short(c)) for c in table.langs]
                      + ["Avg."]) + r" \\", r"\midrule"]
    prev_model = None
    for r in table.rows:
        if prev_model is not None and r.labels["model"] != prev_model:
            out.append(r"\midrule")
        prev_model = r.labels["model"]
        cells = [_tex_escape(r.labels.get(k, "-")) for k in cols]
        for c in table.columns:
            s = fmt(r.values.get(c)).replace("–", "--")
            if c in r.bold:
                s = rf"\textbf{{{s}}}"
            if r.marks.get(c):
                s += r"$^\dagger$"
            cells.append(s)
        out.append(" & ".join(cells) + r" \\")
    caption = _tex_escape(_caption(table)).replace(DAGGER, r"$^\dagger$")
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{tab:{table.task}}}",
            r"\end{table}"]
    return "\n".join(out) + "\n"


def _lang_short(code: str) -> str:
    return code.split("_")[0] if code != "avg" else "avg"


def table_rich(table: Table, title: str | None = None):
    """The table as a rich Table (for the terminal)."""
    from rich.table import Table as RTable
    cols = _label_columns(table)
    t = RTable(title=title or f"{table.task} · {table.metric} ({'↑' if table.higher_is_better else '↓'})",
               caption=f"bold = best per column (baseline excluded); {DAGGER} p < 0.1 vs baseline")
    for c in cols:
        t.add_column(c.capitalize())
    for c in table.columns:
        t.add_column(_lang_short(c), justify="right")
    for r in table.rows:
        cells = [r.labels.get(k, "-") for k in cols]
        for c in table.columns:
            s = fmt(r.values.get(c)) + r.marks.get(c, "")
            cells.append(f"[bold green]{s}[/]" if c in r.bold else s)
        t.add_row(*cells, style="dim" if r.is_baseline else None)
    return t


# ---------------------------------------------------------------------------------------- figures
def _save(fig, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    outs = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        fig.savefig(p, dpi=150, bbox_inches="tight")
        outs.append(p)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return outs


def _groups(rows: list[Row]) -> dict[tuple, list[Row]]:
    g: dict[tuple, list[Row]] = {}
    for r in rows:
        g.setdefault((r.labels["method"], r.labels["sparsity"], r.labels.get("variant", "-")), []).append(r)
    return g


def _slug(s: str) -> str:
    import re
    return re.sub(r"[^A-Za-z0-9.+=]+", "-", s).strip("-")


def figure_bars(table: Table, model: str, folder: Path) -> list[Path]:
    """Per evaluation language: the primary metric of every row (grouped by method · sparsity),
    x = calibration; the baseline as a dashed line. Perplexity is drawn on a log axis as points on
    stems from the baseline (a bar's length would mean nothing there)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in table.rows if r.labels["model"] == model]
    base = next((r for r in rows if r.is_baseline), None)
    others = [r for r in rows if r is not base]
    if not others:
        return []
    cals = list(dict.fromkeys(r.labels["calibration"] for r in others))
    groups = _groups(others)
    cols = table.columns
    ncol = min(4, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow + 0.6), squeeze=False)
    width = 0.8 / max(1, len(groups))
    cmap = plt.get_cmap("tab10")
    log_scale = not table.higher_is_better and table.metric == "ppl"
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    for i, col in enumerate(cols):
        ax = axes[i // ncol][i % ncol]
        ref = base.values.get(col) if base is not None else None
        for gi, (gkey, grows) in enumerate(groups.items()):
            xs, ys = [], []
            for r in grows:
                v = r.values.get(col)
                if v is not None:
                    xs.append(cals.index(r.labels["calibration"]) + (gi - (len(groups) - 1) / 2) * width)
                    ys.append(v)
            name = " · ".join(x for x in gkey if x != "-")
            if log_scale:  # bar lengths mean nothing on a log axis: a stem from the baseline to the value
                if ref is not None:
                    ax.vlines(xs, ref, ys, color=cmap(gi % 10), lw=2)
                ax.plot(xs, ys, "o", color=cmap(gi % 10), label=name)
            else:
                ax.bar(xs, ys, width=width * 0.95, color=cmap(gi % 10), label=name)
        if ref is not None:
            ax.axhline(ref, color="black", ls="--", lw=1, label=f"{base.label} (baseline)")
        ax.set_xticks(range(len(cals)))
        ax.set_xticklabels(["none (data-free)" if c == "-" else lang_label(c) for c in cals], rotation=45,
                           ha="right", fontsize=8)
        ax.set_title(f"evaluated on {lang_label(col)}" if col != "avg" else "average", fontsize=10)
        ax.set_xlabel("calibration language", fontsize=8)
        ax.set_ylabel(table.metric + (" (log scale)" if log_scale else ""), fontsize=8)
        if log_scale:
            ax.set_yscale("log")
            lo, hi = ax.get_ylim()
            decades = math.log10(hi / lo) if lo > 0 else 9.0  # about 3-6 plain labels per axis
            subs = (1.0, 2.0, 5.0) if decades <= 1.6 else (1.0, 3.0) if decades <= 3 else (1.0,)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="y", alpha=0.3)
    for j in range(len(cols), nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    arrow = "higher is better" if table.higher_is_better else "lower is better"
    fig.suptitle(f"{model} — {table.task} {table.metric} ({arrow}) per evaluation language vs calibration")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return _save(fig, folder / f"{table.task}-{_slug(model)}-bars")


def lang_label(label: str) -> str:
    """The English name of a language code or calibration label (``eng_Latn``, ``eng``, ``en`` →
    English; ``deu+eng`` → German+English), so figures name languages one way; other labels as they are."""
    from .languages import get_language
    if label == "avg":
        return "average"
    parts = [x for x in label.replace(",", "+").split("+") if x]
    try:
        return "+".join(get_language(x).name for x in parts) if parts else label
    except UserError:
        return label


def relative_change(value: float | None, ref: float | None) -> float:
    """(value − ref) / |ref| in %, with the data's own sign (a perplexity rising 10 % → +10); NaN if undefined."""
    if value is None or ref is None or not ref:
        return math.nan
    return (value - ref) / abs(ref) * 100.0


def heatmap_changes(rows: list[Row], base: Row | None, cols: list[str], higher_is_better: bool) -> list[list[float]]:
    """Per row and column: :func:`relative_change` against the baseline row, or, without one, against
    the column's best row (so every cell is ≤ 0 % or ≥ 0 % from the best)."""
    out = []
    for r in rows:
        line = []
        for c in cols:
            ref = base.values.get(c) if base is not None else None
            if base is None:
                colvals = [x.values.get(c) for x in rows if x.values.get(c) is not None]
                ref = (max if higher_is_better else min)(colvals) if colvals else None
            line.append(relative_change(r.values.get(c), ref))
        out.append(line)
    return out


def heatmap_scale(changes, higher_is_better: bool):
    """(colormap, norm) for changes in %: red = worse, blue = better, white = no change. Worse is a
    rise for lower-is-better metrics (perplexity), a fall for higher-is-better ones (accuracy)."""
    import numpy as np
    from matplotlib.colors import Normalize, TwoSlopeNorm
    v = np.asarray(changes, dtype=float)
    v = v[~np.isnan(v)]
    lo, hi = (float(min(v.min(), 0.0)), float(max(v.max(), 0.0))) if v.size else (0.0, 0.0)
    rising_is_worse = not higher_is_better
    if lo < 0 < hi:
        return ("RdBu_r" if rising_is_worse else "RdBu"), TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi)
    if hi > 0:  # every change a rise
        return ("Reds" if rising_is_worse else "Blues"), Normalize(vmin=0.0, vmax=hi)
    return ("Blues_r" if rising_is_worse else "Reds_r"), Normalize(vmin=min(lo, -1e-9), vmax=0.0)


def figure_heatmap(table: Table, model: str, folder: Path) -> list[Path]:
    """Calibration × evaluation language, one panel per method · sparsity with ≥ 2 rows. Each cell
    prints the value and, below it, its change against the baseline in %; the colour shows that same
    change (red = worse, blue = better). The baseline is the first row of each panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    rows = [r for r in table.rows if r.labels["model"] == model]
    base = next((r for r in rows if r.is_baseline), None)
    panels = [(k, g) for k, g in _groups([r for r in rows if r is not base]).items() if len(g) >= 2]
    if not panels:
        return []
    cols = table.columns
    shown = [([base] if base is not None else []) + grows for _, grows in panels]
    mats = [np.array(heatmap_changes(g, base, cols, table.higher_is_better), dtype=float) for g in shown]
    cmap, norm = heatmap_scale(np.concatenate([m.ravel() for m in mats]), table.higher_is_better)
    extreme = max(abs(norm.vmin), abs(norm.vmax)) or 1.0
    h = sum(len(g) for g in shown)
    fig, axes = plt.subplots(len(panels), 1, figsize=(1.25 * len(cols) + 3.4, 0.62 * h + 1.3 * len(panels) + 0.6),
                             squeeze=False, gridspec_kw={"height_ratios": [len(g) for g in shown]})
    im = None
    for ax, (gkey, _), grows, m in zip(axes[:, 0], panels, shown, mats):
        im = ax.imshow(m, cmap=cmap, norm=norm, aspect="auto")
        for i, r in enumerate(grows):
            for j, c in enumerate(cols):
                v = r.values.get(c)
                change = "" if np.isnan(m[i, j]) or r is base else f"\n{m[i, j]:+.1f} %"
                ax.text(j, i, fmt(v) + r.marks.get(c, "") + change, ha="center", va="center", fontsize=7.5,
                        fontweight="bold" if c in r.bold else "normal",
                        color="white" if not np.isnan(m[i, j]) and abs(m[i, j]) > 0.6 * extreme else "black")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([lang_label(c) for c in cols], fontsize=8)
        ax.set_yticks(range(len(grows)))
        ax.set_yticklabels([f"{r.label} (baseline)" if r is base else lang_label(r.labels["calibration"])
                            for r in grows], fontsize=8)
        ax.set_ylabel("calibration language", fontsize=9)
        ax.set_title(" · ".join(x for x in gkey if x != "-"), fontsize=10)
    axes[-1, 0].set_xlabel("evaluation language", fontsize=9)
    ref = base.label if base is not None else "the best row of each column"
    cb = fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.9, pad=0.02, format="%+.0f %%")
    cb.set_label(f"{table.metric} change vs {ref} (red = worse, blue = better)", fontsize=8)
    arrow = "higher is better" if table.higher_is_better else "lower is better"
    fig.suptitle(f"{model} — {table.task} {table.metric} ({arrow}): value and change vs {ref}", fontsize=11)
    return _save(fig, folder / f"{table.task}-{_slug(model)}-heatmap")


# ------------------------------------------------------------------------------------------ write
def write_report(source: str | Path, out: str | Path | None = None, baseline: str | None = None,
                 figures: bool = True, significance: bool = True) -> dict:
    """Tables (CSV, Markdown, LaTeX) + figures into ``out`` (default ``<runs>/report``), atomically."""
    from .run import staged_dir
    root = resolve_runs_dir(source)
    tables = build_tables(collect(root), baseline, significance)
    out = Path(out) if out is not None else root / "report"
    written: dict[str, Any] = {"dir": out, "tables": {}, "figures": []}
    with staged_dir(out, force=True) as tmp:
        md = [f"# Report: {root.name}\n"]
        for t in tables:
            (tmp / f"{t.task}.csv").write_text(table_csv(t), encoding="utf-8")
            (tmp / f"{t.task}.md").write_text(table_markdown(t), encoding="utf-8")
            (tmp / f"{t.task}.tex").write_text(table_latex(t), encoding="utf-8")
            written["tables"][t.task] = {ext: out / f"{t.task}.{ext}" for ext in ("csv", "md", "tex")}
            md.append(f"## {t.task}\n\n{table_markdown(t)}")
            if figures:
                for model in dict.fromkeys(r.labels["model"] for r in t.rows):
                    for p in figure_bars(t, model, tmp / "figures") + figure_heatmap(t, model, tmp / "figures"):
                        written["figures"].append(out / "figures" / p.name)
                        if p.suffix == ".png":
                            md.append(f"![{p.stem}](figures/{p.name})\n")
        (tmp / "report.md").write_text("\n".join(md), encoding="utf-8")
    written["tables_obj"] = tables
    return written
