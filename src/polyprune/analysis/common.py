"""Plumbing shared by the analyses: run loading and labels (the scheme of :mod:`polyprune.labels`),
staged output (tables as CSV + JSON, figures as PNG + PDF), evaluation text per language."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..labels import calibration_label

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """A run folder read back: its config, and how to call it in tables and figures."""

    path: Path
    cfg: Any
    key: str = ""  # unique among the analysed runs: the group, plus the seed (or folder) when shared

    @property
    def calib_langs(self) -> list[str]:
        from ..languages import get_language
        out = []
        for code in self.cfg.calibration.langs:
            try:
                out.append(get_language(code).code)
            except UserError:
                out.append(code)
        return out

    @property
    def target_lang(self) -> str | None:
        from ..languages import get_language
        t = self.cfg.calibration.target_lang
        return get_language(t).code if t else None

    @property
    def is_translation(self) -> bool:
        return self.target_lang is not None or "translation" in (self.cfg.calibration.recipe or "")

    @property
    def group(self) -> str:
        """The calibration label of grid cells and report rows (``file:eng``, ``text:fra>eng``), seed
        left out: runs of one group differ only by seed. A calibration file without languages is
        told apart by its name (``file:notes``): runs on two such files are not seeds of one run."""
        cal = self.cfg.calibration
        label = calibration_label(cal.model_dump(mode="json"))
        return f"file:{Path(cal.file).stem}" if label == "file" and cal.file else label

    @property
    def label(self) -> str:
        """Readable name: language names, ``→`` for translation demos (plus the seed when needed)."""
        base = self.group_label
        return base if self.key == self.group or not self.key else f"{base} ({self.key.split(' ', 1)[1]})"

    @property
    def group_label(self) -> str:
        names = "+".join(lang_name(x) for x in self.calib_langs)
        if not names:
            names = Path(self.cfg.calibration.file).stem if self.cfg.calibration.file else self.path.name
        return f"{names}→{lang_name(self.target_lang)}" if self.target_lang else names


def lang_name(code: str | None) -> str:
    if code is None:
        return "?"
    from ..languages import get_language
    try:
        return get_language(code).name
    except UserError:
        return code


def load_runs(paths: list[Path]) -> list[RunInfo]:
    from ..run import is_run, read_config
    out = []
    for p in paths:
        p = Path(p)
        if not is_run(p):
            raise UserError(f"{p} is not a run folder (no config.yaml + masks.safetensors): give folders "
                            f"written by `polyprune prune`")
        out.append(RunInfo(p, read_config(p)))
    groups: dict[str, list[RunInfo]] = {}
    for r in out:
        groups.setdefault(r.group, []).append(r)
    for g, rs in groups.items():
        seeds = [r.cfg.seed for r in rs]
        for r in rs:
            if len(rs) == 1:
                r.key = g
            elif len(set(seeds)) == len(seeds):
                r.key = f"{g} seed{r.cfg.seed}"
            else:
                r.key = f"{g} {r.path.name}"
    keys = [r.key for r in out]
    if len(set(keys)) != len(keys):
        raise UserError("a run folder is given twice: give each run once")
    return out


def same_base(runs: list[RunInfo]) -> None:
    """All runs must prune the same base model."""
    models = {r.cfg.model for r in runs}
    if len(models) > 1:
        raise UserError(f"the runs prune different base models ({', '.join(sorted(models))}): "
                        f"compare runs of one model")


def resolve_eval_langs(langs: list[str] | None, runs: list[RunInfo], need: int, what: str) -> list[str]:
    """Evaluation languages: ``--lang``, else every calibration language of the runs."""
    from ..languages import get_language
    if langs:
        codes = [get_language(x).code for x in langs]
    else:
        codes = []
        for r in runs:
            for c in r.calib_langs + ([r.target_lang] if r.target_lang else []):
                if c not in codes:
                    codes.append(c)
    codes = list(dict.fromkeys(codes))
    if len(codes) < need:
        raise UserError(f"{what} needs at least {need} languages, got {len(codes)}: give them with --lang "
                        f"(e.g. --lang eng_Latn,fra_Latn)")
    return codes


def eval_texts(lang: str, n: int, data_dir) -> list[str]:
    """The first ``n`` FLORES evaluation sentences of ``lang``."""
    from ..data.flores import load_flores
    rows = load_flores(lang, "evaluation", data_dir)
    if not rows:
        raise UserError(f"no FLORES evaluation lines for {lang}")
    return [t for _, t in rows[:n]]


# ------------------------------------------------------------------ staged output
def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


@dataclass
class Output:
    """Everything an analysis writes goes to a temp folder first; :meth:`commit` moves the files
    into place (tables into ``data_dir``, figures into ``fig_dir``), so a failed analysis leaves
    nothing behind."""

    data_dir: Path
    fig_dir: Path
    written: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        base = self.data_dir.parent if self.data_dir.parent.exists() else Path(tempfile.gettempdir())
        self._tmp = Path(tempfile.mkdtemp(prefix=".analysis-", dir=str(base)))
        self._moves: list[tuple[Path, Path]] = []

    def _stage(self, name: str, final_dir: Path) -> Path:
        if any(dst == final_dir / name for _, dst in self._moves):
            raise RuntimeError(f"analysis output {name} written twice")
        p = self._tmp / f"{len(self._moves):03d}-{name}"
        self._moves.append((p, final_dir / name))
        return p

    def table(self, name: str, rows: list[dict]) -> None:
        """``name.csv`` and ``name.json`` (a list of records)."""
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        with open(self._stage(f"{name}.csv", self.data_dir), "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        self.json(name, rows)

    def json(self, name: str, data: Any) -> None:
        with open(self._stage(f"{name}.json", self.data_dir), "w", encoding="utf-8") as f:
            json.dump(_clean(data), f, indent=2, ensure_ascii=False)
            f.write("\n")

    def figure(self, fig, name: str) -> None:
        """``name.png`` (150 dpi) and ``name.pdf``; closes the figure."""
        import matplotlib.pyplot as plt
        fig.savefig(self._stage(f"{name}.png", self.fig_dir), dpi=150, bbox_inches="tight")
        fig.savefig(self._stage(f"{name}.pdf", self.fig_dir), bbox_inches="tight")
        plt.close(fig)

    def commit(self) -> list[Path]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        for src, dst in self._moves:
            os.replace(src, dst)
            self.written.append(dst)
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.written

    def discard(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def plt():
    """matplotlib.pyplot with the Agg backend."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as _plt
    return _plt


def heatmap(ax, values, row_labels, col_labels, cbar_label: str, fmt: str = "{:.2f}", cmap: str = "viridis",
            vmin=None, vmax=None, annotate: bool = True):
    """Annotated heatmap with a labelled colorbar."""
    import numpy as np
    v = np.asarray(values, dtype=float)
    im = ax.imshow(v, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=col_labels, rotation=35, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=row_labels)
    cb = ax.figure.colorbar(im, ax=ax)
    cb.set_label(cbar_label)
    if annotate and v.size <= 400:
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                if np.isfinite(v[i, j]):
                    r, g, b, _ = im.cmap(im.norm(v[i, j]))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    return im


@dataclass
class Options:
    """Settings shared by the analyses (CLI flags of ``polyprune analyze``)."""

    langs: list[str] = field(default_factory=list)
    data_dir: str | None = None
    nsentences: int = 64
    batch_size: int = 8
    beta: float = 0.3
    topk: int = 20
    unique_k: tuple[int, ...] = (20, 50, 100)
    module: str | None = None  # feature magnitudes: relative module name, default the layer's first Linear
    rank: int | None = None  # LSAR rank, default #langs - 1
    activation: str = "product"  # LAPE: "product" (FFN output-projection input: the gated product in GLU
    # blocks, the activation output otherwise) or "act" (the activation function output, as Tang et al.'s code)
    top_rate: float = 0.01
    filter_rate: float = 0.95
    restore: str = "first,last,first+last,each"
    dtype: str | None = "float32"
    device: str | None = "cpu"


def read_stats(run: RunInfo, kind: str, flag: str = "--keep-stats") -> dict[str, dict[str, "torch.Tensor"]]:
    """``param -> set -> tensor`` of one kept statistic (e.g. ``scaler_row``) of a run."""
    from safetensors.torch import load_file
    f = run.path / "stats.safetensors"
    if not f.is_file():
        raise UserError(f"{run.path} kept no input statistics: re-run `polyprune prune` with {flag}")
    out: dict[str, dict] = {}
    for key, t in load_file(str(f)).items():
        param, set_name, k = key.split("::")
        if k == kind:
            out.setdefault(param, {})[set_name] = t
    if not out:
        raise UserError(f"{run.path} kept no {kind!r} statistics: re-run `polyprune prune` with {flag}")
    return out


def skeleton(model_name: str):
    """``(layers path, decoder layers)`` of a model built on the meta device (no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from ..model import find_layers, resolve_model_path
    cfg = AutoConfig.from_pretrained(resolve_model_path(model_name))
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    return find_layers(m)


def module_order(model_name: str) -> tuple[str, list[str]]:
    """``(layers path, relative names of the prunable modules of one decoder layer in model order)``."""
    from ..model import prunable_modules
    path, layers = skeleton(model_name)
    return path, list(prunable_modules(layers[0]))


def integer_xaxis(ax) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
