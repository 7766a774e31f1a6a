"""Running fp32 input statistics of one Linear, per named calibration set (pad-aware).

Update rules follow the references exactly (including their running rescale and float order):
- ``scaler_row`` (Wanda): mean over *samples* of Σ_tokens x², ``s *= n/(n+b); n += b; s += ‖x‖²/n``.
- ``H`` (SparseGPT/GPTQ): ``(2/n) Σ x xᵀ`` with the same running rescale.
- ``moments`` (DSnoT and friends): token-weighted running mean and variance per input feature.
- ``per_lang``: Σ x², token count and count of x > 0 per input feature, per language tag.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

KINDS = ("sqnorm", "hessian", "moments", "per_lang")
ALIASING_STRIDE = 2048  # bytes: rows this far apart (or a multiple) share cache sets


def column_norms(x: torch.Tensor) -> torch.Tensor:
    """‖x[:, j]‖₂ of x [tokens, columns] in fp32, bit-identical to the references'
    ``torch.norm(x.t().float(), p=2, dim=1)``.

    That reduction runs down each column, one row after another; when the fp32 row stride is a
    multiple of 2 KiB (a multiple of 512 features: Gemma-3-270M's o_proj / down_proj inputs, every
    input of a d = 2048 model) every step lands in the same few cache sets. Such inputs are first
    copied into a buffer whose rows are 64 bytes longer (for fp16/bf16 inputs this copy is the fp32
    conversion the references make anyway): each column is still summed in the same order, so the
    same bits, 1.7× (1024 features) to 3× (2048) faster. CPU only: GPU reductions have no such
    cache-set conflict, and there the plain reduction is the references' own code path."""
    if (x.device.type == "cpu" and x.dim() == 2 and x.shape[0] > 1 and x.stride(1) == 1
            and x.shape[1] * 4 % ALIASING_STRIDE == 0):
        buf = torch.empty(x.shape[0], x.shape[1] + 16, dtype=torch.float32)[:, : x.shape[1]]
        buf.copy_(x)
        x = buf
    return torch.norm(x.t().to(torch.float32), p=2, dim=1)


def merge_moments_(mean: torch.Tensor, m2: torch.Tensor, n_a: int, mean_b: torch.Tensor, m2_b: torch.Tensor,
                   n_b: int) -> None:
    """Chan et al.'s merge of (``n_b``, ``mean_b``, ``m2_b``) into (``n_a``, ``mean``, ``m2``), in place;
    m2 = Σ (x - mean)². One float order for a batch of tokens and for a rank's statistics."""
    tot = n_a + n_b
    delta = mean_b - mean
    mean += delta * (n_b / tot)
    m2 += m2_b + delta ** 2 * (n_a * n_b / tot)


@dataclass
class ModuleStats:
    """Statistics of one Linear's inputs over one calibration set.

    Buffers live on ``device`` (that of the inputs they accumulate: no transfer per call) and are
    fp32 (fp64 for the moments) whatever the activations' dtype. Buffers still empty move to the
    device of the first input added, so a caller need not know where the layer runs."""

    columns: int
    kinds: frozenset
    nsamples: int = 0
    ntokens: int = 0
    scaler_row: torch.Tensor | None = None
    H: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None  # Σ (x - mean)² (Welford / Chan merge)
    lang_sqsum: dict = field(default_factory=dict)
    lang_tokens: dict = field(default_factory=dict)
    lang_positive: dict = field(default_factory=dict)
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        self._allocate(torch.device(self.device or "cpu"))

    def _allocate(self, device: torch.device) -> None:
        c = self.columns
        self.device = device
        if "sqnorm" in self.kinds:
            self.scaler_row = torch.zeros(c, dtype=torch.float32, device=device)
        if "hessian" in self.kinds:
            self.H = torch.zeros(c, c, dtype=torch.float32, device=device)
        if "moments" in self.kinds:
            self.mean = torch.zeros(c, dtype=torch.float64, device=device)
            self.m2 = torch.zeros(c, dtype=torch.float64, device=device)

    @property
    def variance(self) -> torch.Tensor:
        """Population variance per input feature."""
        return (self.m2 / max(self.ntokens, 1)).float()

    def add(self, x: torch.Tensor, langs: tuple[str, ...] = (), batch: int = 1) -> None:
        """Add the inputs of one forward call: x [tokens, columns] (pads already removed).

        ``batch`` is the number of samples the tokens came from (the references' ``tmp``)."""
        x = x.reshape(-1, x.shape[-1])
        if x.device != self.device and self.nsamples == 0 and self.ntokens == 0:
            self._allocate(x.device)
        if self.scaler_row is not None or self.H is not None:
            n_old = self.nsamples
            n_new = n_old + batch
            if self.scaler_row is not None:
                self.scaler_row *= n_old / n_new
                self.scaler_row += column_norms(x) ** 2 / n_new
            if self.H is not None:
                xt = x.t().to(torch.float32)
                self.H *= n_old / n_new
                xs = math.sqrt(2 / n_new) * xt
                self.H += xs.matmul(xs.t())
        self.nsamples += batch
        t = x.shape[0]
        if self.mean is not None and t:
            xd = x.to(torch.float64)
            bm = xd.mean(0)
            bm2 = ((xd - bm) ** 2).sum(0)
            n_a = self.ntokens
            merge_moments_(self.mean, self.m2, n_a, bm, bm2, t)
        if "per_lang" in self.kinds and t:
            xf = x.to(torch.float32)
            sq = (xf * xf).sum(0)
            pos = (xf > 0).sum(0).to(torch.float32)
            for lang in langs or ("und",):
                if lang in self.lang_sqsum:
                    self.lang_sqsum[lang] += sq
                    self.lang_positive[lang] += pos
                    self.lang_tokens[lang] += t
                else:
                    self.lang_sqsum[lang] = sq.clone()
                    self.lang_positive[lang] = pos.clone()
                    self.lang_tokens[lang] = t
        self.ntokens += t

    def copy(self) -> "ModuleStats":
        """An independent copy (tensors cloned on their device; ``copy.deepcopy`` cannot copy fake tensors)."""
        out = copy.copy(self)
        for name in ("scaler_row", "H", "mean", "m2"):
            t = getattr(self, name)
            setattr(out, name, None if t is None else t.clone())
        for name in ("lang_sqsum", "lang_positive"):
            setattr(out, name, {k: v.clone() for k, v in getattr(self, name).items()})
        out.lang_tokens = dict(self.lang_tokens)
        return out

    def feature_norm(self) -> torch.Tensor:
        """‖X_j‖ as Wanda uses it: sqrt of the per-sample mean of Σ_tokens x²."""
        if self.scaler_row is None:
            raise KeyError("sqnorm")
        return torch.sqrt(self.scaler_row)

    def lang_norms(self) -> dict[str, torch.Tensor]:
        """Token-count normalised feature norms per language: sqrt(Σ x² / tokens)."""
        return {k: torch.sqrt(v / max(self.lang_tokens[k], 1)) for k, v in self.lang_sqsum.items()}

    def lang_activation_probability(self) -> dict[str, torch.Tensor]:
        return {k: v / max(self.lang_tokens[k], 1) for k, v in self.lang_positive.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat dict for saving (``--keep-stats``)."""
        out: dict[str, torch.Tensor] = {}
        if self.scaler_row is not None:
            out["scaler_row"] = self.scaler_row
        if self.mean is not None:
            out["mean"] = self.mean.float()
            out["var"] = self.variance
        for k in self.lang_sqsum:
            out[f"lang_norm.{k}"] = self.lang_norms()[k]
            out[f"lang_actprob.{k}"] = self.lang_activation_probability()[k]
        return out


class SetStats(dict):
    """``set name -> ModuleStats`` for one Linear; ``stats.target`` is the default set."""

    def __getitem__(self, name: str) -> ModuleStats:
        try:
            return super().__getitem__(name)
        except KeyError:
            from .errors import UserError
            raise UserError(f"calibration set {name!r} is missing: the run has sets {sorted(self)}") from None

    @property
    def target(self) -> ModuleStats:
        return self["target"]
