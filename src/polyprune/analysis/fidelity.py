"""Hidden-state fidelity of a pruned model (Kurz et al. 2025, App. D.1, after Kuzmin et al. 2023).

Per layer k, with H [N, d] the dense and H̃ the pruned hidden states of the same N real tokens
(pads and special tokens excluded) and μ = mean token norm ‖h_i‖₂ of the dense states:

- pruning error  = 1/(N d) Σ ((h − h̃)/μ)²
- SNR_dB         = 10 log10( (1/(N d) Σ (h/μ)²) / pruning error ); the model SNR is the mean over layers.

Both are computed from running sums so that any number of batches can stream through.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def pruning_error(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    """Normalised pruning error of one layer; ``dense``/``pruned``: [N, d] real tokens only."""
    acc = FidelityAccumulator()
    acc.add(dense, pruned)
    return acc.pruning_error


def snr_db(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    """SNR in dB of one layer; ``dense``/``pruned``: [N, d] real tokens only."""
    acc = FidelityAccumulator()
    acc.add(dense, pruned)
    return acc.snr_db


@dataclass
class FidelityAccumulator:
    """Running sums for one layer: Σ‖h‖, Σ‖h‖², Σ‖h − h̃‖², token count N and width d."""

    n: int = 0
    d: int = 0
    sum_norm: float = 0.0
    sum_sq: float = 0.0
    sum_err: float = 0.0

    def add(self, dense: torch.Tensor, pruned: torch.Tensor) -> None:
        h = dense.reshape(-1, dense.shape[-1]).double()
        ht = pruned.reshape(-1, pruned.shape[-1]).double()
        if h.shape != ht.shape:
            raise ValueError(f"dense {tuple(h.shape)} and pruned {tuple(ht.shape)} hidden states differ")
        self.d = h.shape[1]
        self.n += h.shape[0]
        norms = h.norm(dim=1)
        self.sum_norm += float(norms.sum())
        self.sum_sq += float((norms ** 2).sum())
        self.sum_err += float(((h - ht) ** 2).sum())

    @property
    def mu(self) -> float:
        return self.sum_norm / self.n

    @property
    def pruning_error(self) -> float:
        return self.sum_err / (self.n * self.d * self.mu ** 2)

    @property
    def signal(self) -> float:
        return self.sum_sq / (self.n * self.d * self.mu ** 2)

    @property
    def snr_db(self) -> float:
        if self.sum_err == 0:
            return math.inf
        return 10.0 * math.log10(self.signal / self.pruning_error)


# ------------------------------------------------------------------ plumbing
def run_snr(runs, opts, out) -> dict:
    """Pruning error and SNR (dB) of every decoder layer's output, per run and evaluation language,
    over FLORES evaluation sentences (pads and the start token excluded)."""
    from .common import resolve_eval_langs
    from .hidden import collect
    langs = resolve_eval_langs(opts.langs, runs, 1, "snr")
    res = collect(runs, langs, opts, keep_states=True)
    rows, summary = [], []
    for ri, r in enumerate(runs):
        for lang in langs:
            accs = res.fidelity[(ri, lang)]
            finite = [a.snr_db for a in accs if math.isfinite(a.snr_db)]
            for li, a in enumerate(accs):
                rows.append({"run": r.key, "lang": lang, "layer": li, "pruning_error": a.pruning_error,
                             "snr_db": a.snr_db, "tokens": a.n, "mean_token_norm": a.mu})
            summary.append({"run": r.key, "lang": lang,
                            "snr_db_mean": sum(finite) / len(finite) if finite else math.inf,
                            "pruning_error_mean": sum(a.pruning_error for a in accs) / len(accs),
                            "tokens": accs[0].n})
    out.table("snr_per_layer", rows)
    out.table("snr_per_lang", summary)
    _plot_snr(out, runs, langs, rows, summary)
    return {"langs": langs, "summary": summary}


def _plot_snr(out, runs, langs, rows, summary) -> None:
    from .common import heatmap, integer_xaxis, lang_name, plt as _plt
    plt = _plt()
    n = len(langs)
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n + 1, 6.2), squeeze=False, sharex=True)
    for j, lang in enumerate(langs):
        for r in runs:
            sel = [x for x in rows if x["run"] == r.key and x["lang"] == lang]
            xs = [x["layer"] for x in sel]
            axes[0, j].plot(xs, [x["snr_db"] for x in sel], marker="o", ms=2.5, label=r.label)
            axes[1, j].plot(xs, [x["pruning_error"] for x in sel], marker="o", ms=2.5, label=r.label)
        axes[0, j].set_title(f"evaluated on {lang_name(lang)}")
        axes[1, j].set_xlabel("decoder layer")
        axes[1, j].set_yscale("log")
        for a in axes[:, j]:
            a.grid(alpha=0.3)
            integer_xaxis(a)
    axes[0, 0].set_ylabel("SNR (dB)")
    axes[1, 0].set_ylabel("pruning error (normalised)")
    axes[0, -1].legend(title="calibration", fontsize=7, title_fontsize=8)
    fig.suptitle("Hidden-state fidelity of the pruned models per layer")
    fig.tight_layout()
    out.figure(fig, "snr_layers")
    fig, ax = plt.subplots(figsize=(1.3 * n + 3.5, 0.6 * len(runs) + 2))
    val = {(s["run"], s["lang"]): s["snr_db_mean"] for s in summary}
    heatmap(ax, [[val[(r.key, lang)] for lang in langs] for r in runs], [r.label for r in runs],
            [lang_name(x) for x in langs], "SNR (dB), mean over layers", fmt="{:.2f}")
    ax.set_xlabel("evaluation language")
    ax.set_ylabel("calibration")
    ax.set_title("Mean SNR of hidden states (higher = closer to the dense model)")
    out.figure(fig, "snr_summary")
