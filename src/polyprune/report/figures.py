"""A report's figures (PNG + PDF): per-language bars of the primary metric against the calibration,
and heatmaps of calibration × evaluation language coloured by the change against the baseline.
matplotlib is imported only when a figure is drawn."""
from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import UserError
from ..languages import get_language
from .collect import Row, Table
from .render import fmt


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
