"""Layer-wise sparsity allocations: a registry of ``(model, calibration, sparsity, pattern, *, count_pads,
**options) -> list[float]`` (one sparsity target per decoder layer), used by ``pp.prune(allocation=...)``.

- ``owl`` (Yin et al. 2024): pass 1 on the dense model computes the Wanda scores A = |W|·‖X‖ of every
  Linear of block l and its outlier ratio D_l = 100·#{a > M·mean(A_l)}/|A_l|; then
  r_l = 2λ(D_l − min D)/(max D − min D) and S_l = S − (r_l − r̄), r̄ the parameter-weighted mean of r,
  so the parameter-weighted average sparsity is exactly S. For N:M patterns N varies per block:
  r_l = λ(D_l − min)/(max − min), N_l = N − round(r_l − r̄) (targets are returned as N_l / M).
- ``lang-corr`` (this project's language-aware allocation): the same band, driven by how differently
  languages use each block: D_l = 1 − mean pairwise Pearson correlation (over input features of all
  Linears of the block) of the per-language feature norms n_ℓ; low correlation → lower sparsity.

Targets outside [0, 1) are an error; targets in [0.99, 1) are clamped to 0.99 and the excess is spread
over the other layers (by parameter count) so the average stays S.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from pydantic import BaseModel

from . import options as _options
from .errors import UserError
from .masks import Pattern, weight_matrix
from .options import Bool, Number, Strict
from .registry import Registry

log = logging.getLogger(__name__)

MAX_LAYER_SPARSITY = 0.99


@dataclass
class Allocation:
    """A registered allocation; calling it validates options and fills defaults."""

    name: str
    fn: Callable[..., list[float]]
    options_model: type[BaseModel] = _options.NoOptions  # typed options with their defaults
    needs_calibration: bool = True
    doc: str = ""

    @property
    def options(self) -> dict[str, Any]:
        """``{option: default}``, from the options model."""
        return _options.defaults(self.options_model)

    def fill_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """``options`` validated, every default filled (one line naming a bad option)."""
        return _options.fill("allocation", self.name, self.options_model, options)

    def __call__(self, model, calibration, sparsity: float, pattern: Pattern, *, count_pads: bool = False,
                 **options) -> list[float]:
        filled = self.fill_options(options)
        if self.needs_calibration and calibration is None:
            raise UserError(f"allocation {self.name!r} needs calibration data: give --calibration-file or a recipe")
        return self.fn(model, calibration, sparsity, pattern, count_pads=count_pads, **filled)


ALLOCATIONS: Registry[Allocation] = Registry("allocation", also=("uniform",))


def is_uniform(name: str | None) -> bool:
    """True when ``name`` asks for the same sparsity in every layer (no allocation, "" or "uniform")."""
    return name in (None, "", "uniform")


def register_allocation(name: str, options: type[BaseModel] | dict | None = None, needs_calibration: bool = True):
    """Decorator: register a layer-wise allocation under ``name``; ``options``: its options model."""
    def deco(fn):
        ALLOCATIONS.register(name, Allocation(name, fn, _options.options_model(name, options), needs_calibration,
                                              (fn.__doc__ or "").strip()))
        return fn
    return deco


def get_allocation(name: str) -> Allocation:
    return ALLOCATIONS.resolve(name)


# ---------------------------------------------------------------------------------------------
# pure math

def outlier_ratio(scores: torch.Tensor, m: float) -> float:
    """OWL's layer outlier ratio in percent: 100·#{a > m·mean(a)} / |a|."""
    a = scores.flatten()
    return (a > a.mean() * m).sum().item() / a.numel() * 100.0


def _weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum() / w.sum()


def _normalised(d: Sequence[float], lam: float) -> torch.Tensor:
    """λ·(D − min D)/(max D − min D) in float64; all zeros when every D is equal."""
    dd = torch.as_tensor(list(d), dtype=torch.float64)
    span = dd.max() - dd.min()
    if float(span) == 0.0:
        return torch.zeros_like(dd)
    return (dd - dd.min()) / span * lam


def clamp_redistribute(targets: torch.Tensor, weights: torch.Tensor, hi: float = MAX_LAYER_SPARSITY,
                       lo: float = 0.0) -> torch.Tensor:
    """Clamp to [lo, hi] and spread what was cut over the unclamped layers (by weight) so that the
    weighted mean is unchanged; repeats until nothing is out of range."""
    t = targets.clone().to(torch.float64)
    w = weights.to(torch.float64)
    goal = _weighted_mean(t, w)
    fixed = torch.zeros_like(t, dtype=torch.bool)
    for _ in range(len(t) + 1):
        out = (t > hi) | (t < lo)
        if not out.any():
            return t
        fixed |= out
        t = t.clamp(lo, hi)
        free = ~fixed
        if not free.any():
            break
        missing = float(goal * w.sum() - (t * w).sum())
        t[free] += missing / float(w[free].sum())
    raise UserError(f"no layer-wise allocation keeps every layer within [{lo}, {hi}] at average sparsity "
                    f"{float(goal):.4f}: lower the sparsity or λ")


def band_allocation(divergence: Sequence[float], sparsity: float, lam: float,
                    weights: Sequence[float] | None = None) -> list[float]:
    """OWL's rule: r = 2λ·(D − min)/(max − min), S_l = S − (r_l − r̄), r̄ weighted by ``weights``
    (parameters per layer; equal by default). Higher D → lower sparsity. Targets outside [0, 1) are an
    error; those above 0.99 are clamped with the excess spread over the other layers."""
    n = len(divergence)
    w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(list(weights), dtype=torch.float64)
    if lam < 0:
        raise UserError(f"allocation λ={lam} is negative: give λ ≥ 0 (OWL's default is 0.08)")
    r = _normalised(divergence, 2.0 * lam)
    s = sparsity - (r - _weighted_mean(r, w))
    bad = [(i, float(v)) for i, v in enumerate(s) if not 0.0 <= float(v) < 1.0]
    if bad:
        i, v = bad[0]
        raise UserError(f"allocation would give decoder layer {i} sparsity {v:.4f}, outside [0, 1): "
                        f"lower λ (now {lam}) or move the target sparsity {sparsity} away from the edge")
    return [float(x) for x in clamp_redistribute(s, w)]


def band_allocation_nm(divergence: Sequence[float], pattern: Pattern, lam: float,
                       weights: Sequence[float] | None = None) -> list[int]:
    """OWL's N:M rule: r = λ·(D − min)/(max − min), N_l = N − round(r_l − r̄). Returns N_l per layer."""
    n = len(divergence)
    w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(list(weights), dtype=torch.float64)
    r = _normalised(divergence, lam)
    shift = torch.round(r - _weighted_mean(r, w))
    out = [int(pattern.n - int(x)) for x in shift]
    bad = [(i, v) for i, v in enumerate(out) if not 0 <= v < pattern.m]
    if bad:
        i, v = bad[0]
        raise UserError(f"allocation would prune {v} of every {pattern.m} weights in decoder layer {i} "
                        f"(outside [0, {pattern.m})): lower λ (now {lam})")
    return out


def pearson_divergence(lang_norms: dict[str, torch.Tensor]) -> float:
    """1 − mean pairwise Pearson correlation between the languages' feature-norm vectors."""
    langs = sorted(lang_norms)
    if len(langs) < 2:
        raise UserError(f"a language-correlation allocation needs calibration in at least two languages "
                        f"(got {langs}): use a multilingual recipe such as mix or mbs")
    x = torch.stack([lang_norms[k].to(torch.float64) for k in langs])
    c = torch.corrcoef(x)
    iu = torch.triu_indices(len(langs), len(langs), offset=1, device=x.device)
    vals = c[iu[0], iu[1]]
    vals = torch.nan_to_num(vals, nan=0.0)  # a constant vector has no correlation
    return 1.0 - vals.mean().item()


# ---------------------------------------------------------------------------------------------
# model plumbing: one dense pass, no pruning

# the placement of the pruning run (layer-by-layer onloading, hidden-state device) that a data-driven
# allocation's dense pass follows; set by pp.prune around the allocation, not an argument of the
# allocation functions, whose signature registered allocations share
WALK_PLACEMENT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("walk_placement", default=None)


@contextlib.contextmanager
def walk_placement(options: dict | None):
    """Dense passes inside the block walk the layers with these :func:`polyprune.collect.walk` options."""
    token = WALK_PLACEMENT.set(options)
    try:
        yield
    finally:
        WALK_PLACEMENT.reset(token)


def _dense_pass(model, calibration, kinds: set[str], count_pads: bool, per_layer: Callable, description: str):
    """Walk the dense model (statistics from dense inputs, nothing pruned) and call
    ``per_layer(i, {module name: ModuleStats}, {module name: W [out, in]})``."""
    from .calibration import as_calibration
    from .collect import walk
    from .model import prunable_modules
    cal = as_calibration(calibration)
    set_name = "target" if "target" in cal.sets else cal.sets[0]
    walk_options = WALK_PLACEMENT.get()

    def on_layer(i, layer, stats):
        mods = prunable_modules(layer)
        per_layer(i, {n: stats[n][set_name] for n in mods},
                  {n: weight_matrix(m).detach().to(torch.float32) for n, m in mods.items()})

    walk(model, cal, frozenset(kinds), (set_name,), on_layer, sequential=False, count_pads=count_pads,
         description=description, **(walk_options or {}))


def owl_outlier_ratios(model, calibration, m: float = 5.0, count_pads: bool = False) -> tuple[list[float], list[int]]:
    """Per decoder layer: OWL's outlier ratio D_l (percent) of its Wanda scores, and its parameter count."""
    from .methods.wanda import wanda_scores
    ratios: dict[int, float] = {}
    params: dict[int, int] = {}

    def per_layer(i, stats, weights):
        a = torch.cat([wanda_scores(W, stats[n].feature_norm()).flatten() for n, W in weights.items()])
        ratios[i] = outlier_ratio(a, m)
        params[i] = a.numel()

    _dense_pass(model, calibration, {"sqnorm"}, count_pads, per_layer, "owl outlier ratios")
    n = len(ratios)
    return [ratios[i] for i in range(n)], [params[i] for i in range(n)]


def _targets(divergence, params, sparsity, pattern: Pattern, lam, lam_nm, weighted: bool) -> list[float]:
    w = params if weighted else None
    if pattern.structured:
        ns = band_allocation_nm(divergence, pattern, lam_nm, w)
        return [v / pattern.m for v in ns]
    return band_allocation(divergence, sparsity, lam, w)


class BandOptions(Strict):
    lam: Number = 0.08  # λ: the band half-width is 2λ
    lam_nm: Number = 2.0  # λ for N:M patterns (the reference's N:M script uses λ = 2)
    weighted: Bool = True  # average by parameter count


class OWLOptions(BandOptions):
    m: Number = 5.0  # outlier threshold M × mean score


@register_allocation("owl", options=OWLOptions)
def owl(model, calibration, sparsity, pattern, *, count_pads=False, m=5.0, lam=0.08, lam_nm=2.0, weighted=True):
    """OWL (Yin et al. 2024): outlier-weighted layer sparsity. ``m`` = M (outlier threshold × mean score),
    ``lam`` = λ (band half-width is 2λ), ``lam_nm`` = λ for N:M patterns (the reference's N:M script uses
    λ = 2), ``weighted``: average by parameter count (equal blocks: the plain mean, as the reference)."""
    d, params = owl_outlier_ratios(model, calibration, m, count_pads)
    out = _targets(d, params, sparsity, pattern, lam, lam_nm, weighted)
    log.info("owl: outlier ratios %s -> layer sparsity %s", [round(x, 3) for x in d], [round(x, 4) for x in out])
    return out


def lang_correlation_divergence(model, calibration, count_pads: bool = False) -> tuple[list[float], list[int]]:
    """Per decoder layer: 1 − mean pairwise correlation of per-language feature norms (all Linears of the
    block concatenated), and its parameter count."""
    div: dict[int, float] = {}
    params: dict[int, int] = {}

    def per_layer(i, stats, weights):
        langs = sorted(set.intersection(*[set(s.lang_sqsum) for s in stats.values()]))
        norms = {k: torch.cat([stats[n].lang_norms()[k] for n in weights]) for k in langs}
        div[i] = pearson_divergence(norms)
        params[i] = sum(W.numel() for W in weights.values())

    _dense_pass(model, calibration, {"per_lang"}, count_pads, per_layer, "language correlations")
    n = len(div)
    return [div[i] for i in range(n)], [params[i] for i in range(n)]


@register_allocation("lang-corr", options=BandOptions)
def lang_corr(model, calibration, sparsity, pattern, *, count_pads=False, lam=0.08, lam_nm=2.0, weighted=True):
    """Language-correlation allocation (this project's): blocks whose per-language input-feature norms
    correlate least across languages get lower sparsity, in OWL's band (λ as in ``owl``)."""
    d, params = lang_correlation_divergence(model, calibration, count_pads)
    out = _targets(d, params, sparsity, pattern, lam, lam_nm, weighted)
    log.info("lang-corr: divergence %s -> layer sparsity %s", [round(x, 4) for x in d], [round(x, 4) for x in out])
    return out


__all__ = ["ALLOCATIONS", "Allocation", "band_allocation", "band_allocation_nm", "clamp_redistribute",
           "get_allocation", "is_uniform", "lang_correlation_divergence", "outlier_ratio", "owl_outlier_ratios",
           "pearson_divergence", "register_allocation"]
