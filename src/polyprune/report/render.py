"""A report table as text: CSV (every value, std and p-value), Markdown, LaTeX and a rich table."""
from __future__ import annotations

import csv
import io
import math

from .collect import DAGGER, LABEL_KEYS, Table


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
    from rich.table import Table as RTable  # only for the terminal view
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
