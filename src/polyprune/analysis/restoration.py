"""Layer restoration (Kurz et al. 2025): put chosen decoder layers of a pruned run back to their
dense weights and measure the per-language perplexity change on FLORES evaluation sentences."""
from __future__ import annotations

import logging
import math

from ..errors import UserError

log = logging.getLogger(__name__)


def parse_restore(spec: str, n_layers: int) -> list[tuple[str, list[int]]]:
    """``"first,last,first+last,each,3,0+5"`` → named layer sets (``each`` = every single layer)."""
    out: list[tuple[str, list[int]]] = []
    alias = {"first": 0, "last": n_layers - 1}
    for item in [x.strip() for x in spec.split(",") if x.strip()]:
        if item == "each":
            out += [(f"layer {i}", [i]) for i in range(n_layers)]
            continue
        layers = []
        for part in item.split("+"):
            if part in alias:
                layers.append(alias[part])
            else:
                try:
                    i = int(part)
                except ValueError:
                    raise UserError(f"--restore item {item!r}: use layer indices, first, last, each, "
                                    f"joined by + (e.g. first+last)") from None
                j = i + n_layers if i < 0 else i
                if not 0 <= j < n_layers:
                    raise UserError(f"--restore layer {i} is out of range for {n_layers} decoder layers")
                layers.append(j)
        out.append((item, sorted(set(layers))))
    if not out:
        raise UserError("--restore is empty: give e.g. first,last,each")
    seen, uniq = set(), []
    for name, ls in out:
        if tuple(ls) not in seen:
            seen.add(tuple(ls))
            uniq.append((name, ls))
    return uniq


def recovered(ppl_pruned: float, ppl_dense: float, ppl_restored: float) -> float:
    """Share of the perplexity gap closed: (pruned − restored) / (pruned − dense)."""
    gap = ppl_pruned - ppl_dense
    return (ppl_pruned - ppl_restored) / gap if gap else math.nan


def run_restoration(runs, opts, out) -> dict:
    """For each run: per-language perplexity of the dense model, the pruned model, and the pruned
    model with each requested layer set restored to dense."""
    from ..evaluate.perplexity import perplexity
    from ..model import find_layers
    from ..progress import track
    from .common import eval_texts, resolve_eval_langs
    from .hidden import WeightSwitch, load_base
    langs = resolve_eval_langs(opts.langs, runs, 1, "restoration")
    texts = {lang: eval_texts(lang, opts.nsentences, opts.data_dir) for lang in langs}
    model, tok = load_base(runs, opts)
    path, layers = find_layers(model)
    sets = parse_restore(opts.restore, len(layers))
    sw = WeightSwitch(model)

    def ppl(lang):
        return perplexity(model, tok, texts[lang], batch_size=opts.batch_size)["ppl"]

    sw.restore()
    dense = {lang: ppl(lang) for lang in langs}
    rows = []
    for r in runs:
        sw.apply(r.path)
        pruned = {lang: ppl(lang) for lang in langs}
        for lang in langs:
            rows.append({"run": r.key, "restored": "none (pruned)", "layers": "", "lang": lang,
                         "ppl": pruned[lang], "ppl_dense": dense[lang], "ppl_pruned": pruned[lang],
                         "delta_ppl": 0.0, "rel_change": 0.0, "recovered": 0.0})
        for name, ls in track(sets, f"restore {r.key}", total=len(sets)):
            sw.apply(r.path)
            sw.restore([n for n in sw.params if any(n.startswith(f"{path}.{i}.") for i in ls)])
            for lang in langs:
                p = ppl(lang)
                rows.append({"run": r.key, "restored": name, "layers": "+".join(map(str, ls)), "lang": lang,
                             "ppl": p, "ppl_dense": dense[lang], "ppl_pruned": pruned[lang],
                             "delta_ppl": p - pruned[lang], "rel_change": p / pruned[lang] - 1,
                             "recovered": recovered(pruned[lang], dense[lang], p)})
    sw.restore()
    out.table("restoration", rows)
    _plot(out, runs, langs, rows, sets, dense)
    best = {}
    for r in runs:
        for lang in langs:
            sel = [x for x in rows if x["run"] == r.key and x["lang"] == lang and "+" not in x["layers"]
                   and x["layers"]]
            if sel:
                b = max(sel, key=lambda x: x["recovered"])
                best[f"{r.key} {lang}"] = {"layer": b["layers"], "recovered": b["recovered"], "ppl": b["ppl"]}
    return {"langs": langs, "dense_ppl": dense, "sentences": opts.nsentences, "best_single_layer": best}


def _plot(out, runs, langs, rows, sets, dense) -> None:
    from .common import heatmap, integer_xaxis, lang_name, plt as _plt
    plt = _plt()
    singles = sorted(((n, ls) for n, ls in sets if len(ls) == 1), key=lambda x: x[1][0])
    multis = [(n, ls) for n, ls in sets if not n.startswith("layer ")]
    for r in runs:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.3), gridspec_kw={"width_ratios": [3, 2]})
        for lang in langs:
            sel = {x["layers"]: x for x in rows if x["run"] == r.key and x["lang"] == lang}
            xs = [ls[0] for _, ls in singles]
            axes[0].plot(xs, [100 * sel[str(i)]["rel_change"] for i in xs], marker="o", ms=3,
                         label=f"{lang_name(lang)} (pruned {sel['']['ppl']:.1f}, dense {dense[lang]:.1f})")
        axes[0].axhline(0, color="grey", lw=0.8)
        axes[0].set_xlabel("decoder layer restored to dense (alone)")
        axes[0].set_ylabel("perplexity change vs pruned (%)")
        axes[0].set_title("Restoring one layer")
        axes[0].grid(alpha=0.3)
        integer_xaxis(axes[0])
        axes[0].legend(fontsize=7, title="evaluation language (ppl)", title_fontsize=7, loc="upper center",
                       bbox_to_anchor=(0.5, -0.17), ncol=2)
        if multis:
            val = {(x["restored"], x["lang"]): x["rel_change"] * 100 for x in rows if x["run"] == r.key}
            vals = [[val[(n, lang)] for lang in langs] for n, _ in multis]
            lim = max(1e-9, max(abs(x) for row in vals for x in row))
            heatmap(axes[1], vals,
                    [f"{n} ({'+'.join(map(str, ls))})" for n, ls in multis], [lang_name(x) for x in langs],
                    "perplexity change vs pruned (%)", fmt="{:.1f}", cmap="RdYlGn_r",
                    vmin=-lim, vmax=lim)
            axes[1].set_xlabel("evaluation language")
            axes[1].set_title("Restoring named layer sets")
        else:
            axes[1].axis("off")
        fig.suptitle(f"Layer restoration of the run calibrated on {r.label}")
        fig.tight_layout()
        out.figure(fig, f"restoration_{_safe(r.key)}" if len(runs) > 1 else "restoration")


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+" else "-" for c in s)
