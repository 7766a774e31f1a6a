"""One top-k mask builder for per-row / per-matrix / N:M patterns, mask I/O and sparsity accounting.

Masks are bool tensors, ``True`` = kept, in the parameter's own stored shape, keyed by the full
parameter name (``model.layers.0.self_attn.q_proj.weight``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError


@dataclass(frozen=True)
class Pattern:
    """``unstructured`` (n = m = 0) or N:M (n pruned out of every m consecutive input weights)."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        return self.n / self.m if self.m else float("nan")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"


def parse_pattern(text: str | Pattern | None) -> Pattern:
    if text is None or isinstance(text, Pattern):
        return text or Pattern()
    t = str(text).strip().lower()
    if t in ("", "unstructured", "none"):
        return Pattern()
    m = re.fullmatch(r"(\d+)\s*:\s*(\d+)", t)
    if not m:
        raise UserError(f"unknown pattern {text!r}: use 'unstructured' or N:M such as 2:4")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise UserError(f"pattern {text}: need 0 < N < M (N pruned out of every M), e.g. 2:4")
    return Pattern(n, mm)


def check_sparsity(s: float) -> float:
    if not (isinstance(s, (int, float)) and 0.0 < float(s) < 1.0):
        raise UserError(f"sparsity {s!r} is outside (0, 1): give a fraction such as 0.5")
    return float(s)


def nm_pruned(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Pruned mask (True = pruned): the ``n`` lowest scores of every ``m`` consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise UserError(f"in_features {cols} is not divisible by M={m}: choose another N:M pattern")
    grouped = scores.reshape(rows, cols // m, m)
    idx = torch.topk(grouped, n, dim=-1, largest=False)[1]
    pruned = torch.zeros_like(grouped, dtype=torch.bool)
    pruned.scatter_(-1, idx, True)
    return pruned.reshape(rows, cols)


ROW_BLOCK_ELEMENTS = 1 << 22  # lowest_k works on blocks of rows this large: kthvalue copies its input
# and allocates int64 indices of the same size, 12 bytes per score for the whole matrix otherwise


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the ``k`` lowest entries of every row of ``scores`` [rows, n], ties going to the
    earlier index: exactly the first ``k`` of a stable ascending sort, in O(n) per row (the k-th
    value by selection, then the tied entries at that value counted from the left). Rows are
    independent: large matrices go through in blocks of rows (bounded temporaries, same result)."""
    rows, n = scores.shape
    if k <= 0:
        return torch.zeros(rows, n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(rows, n, dtype=torch.bool, device=scores.device)
    step = max(1, ROW_BLOCK_ELEMENTS // n)
    if rows <= step:
        return _lowest_k(scores, k)
    out = torch.empty(rows, n, dtype=torch.bool, device=scores.device)
    for r in range(0, rows, step):
        out[r:r + step] = _lowest_k(scores[r:r + step], k)
    return out


def _lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    if kth.is_floating_point() and bool(torch.isnan(kth).any()):  # NaN sorts last; only sort can order them
        out = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        return out.scatter_(1, torch.sort(scores, dim=-1, stable=True)[1][:, :k], True)
    pruned = scores <= kth
    if bool((pruned.sum(1) > k).any()):  # some row has more ties at the k-th value than places left
        # every row at once, no data-dependent row gather: a row without excess ties keeps all its
        # tied entries (room = their count), so only the rows that need it change
        below = scores < kth
        room = k - below.sum(1, keepdim=True)  # tied entries that still go, counted from the left
        tied = scores == kth
        pruned = below | (tied & (tied.cumsum(1) <= room))
    return pruned


def topk_pruned(scores: torch.Tensor, sparsity: float, scope: str = "row") -> torch.Tensor:
    """Pruned mask of the ``int(k·s)`` lowest scores per row (``scope='row'``, k = columns) or in
    the whole matrix (``scope='matrix'``, k = numel); ties prune the earlier index (as a stable sort)."""
    if scope == "row":
        return lowest_k(scores, int(scores.shape[1] * sparsity))
    if scope == "matrix":
        return lowest_k(scores.reshape(1, -1), int(scores.numel() * sparsity)).reshape(scores.shape)
    raise UserError(f"unknown comparison scope {scope!r}: use 'row' or 'matrix'")


def threshold_pruned(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The reference (locuslab/sparsegpt) rule: prune ``<=`` the sorted value at index int(n·s),
    i.e. one weight more than int(n·s), plus ties."""
    thresh = torch.sort(scores.flatten())[0][int(scores.numel() * sparsity)]
    return scores <= thresh


def build_pruned(scores: torch.Tensor, sparsity: float, pattern: Pattern, scope: str = "row",
                 reference_threshold: bool = False) -> torch.Tensor:
    """Pruned mask (True = pruned) from scores [out, in] (higher = more important)."""
    if pattern.structured:
        return nm_pruned(scores, pattern.n, pattern.m)
    if reference_threshold and scope == "matrix":
        return threshold_pruned(scores, sparsity)
    return topk_pruned(scores, sparsity, scope)


# ---------------------------------------------------------------------------------------------
# weight views: Conv1D stores [in, out]; methods always see [out, in]

def is_conv1d(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def weight_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (a view; Conv1D's stored weight is transposed)."""
    w = module.weight.data
    return w.t() if is_conv1d(module) else w


def to_stored(module: torch.nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """Bring a [out, in] tensor back to the module's stored weight layout."""
    return matrix.t().contiguous() if is_conv1d(module) else matrix.contiguous()


# ---------------------------------------------------------------------------------------------

def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor], strict: bool = True) -> int:
    """Zero the pruned weights (mask False) in place; returns the number of zeroed weights."""
    params = dict(model.named_parameters())
    zeroed = 0
    for name, mask in masks.items():
        if name not in params:
            if strict:
                raise UserError(f"mask for {name!r} matches no parameter of this model: "
                                f"masks were made for another architecture")
            continue
        p = params[name]
        if tuple(p.shape) != tuple(mask.shape):
            raise UserError(f"mask {name} has shape {tuple(mask.shape)} but the parameter is {tuple(p.shape)}: "
                            f"masks were made for another model")
        with torch.no_grad():
            p.data.mul_(mask.to(device=p.device, dtype=p.dtype))
        zeroed += int((~mask).sum())
    return zeroed


MASK_FORMAT = "polyprune-masks"
BIT_ORDER = "little"  # bit i of byte j holds element 8·j + i of the row-major flattened mask


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """One bit per element (uint8, 1-D, ``ceil(numel / 8)`` bytes, little bit order, zero padding)."""
    import numpy as np
    flat = mask.detach().to(torch.bool).contiguous().cpu().reshape(-1).numpy()
    return torch.from_numpy(np.packbits(flat, bitorder=BIT_ORDER))


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a bool tensor of ``shape``."""
    import numpy as np
    n = int(np.prod(shape)) if len(shape) else 1
    bits = np.unpackbits(packed.contiguous().numpy(), count=n, bitorder=BIT_ORDER).astype(bool)
    return torch.from_numpy(bits).reshape(tuple(shape))


class MaskWriter:
    """Write a masks file one matrix at a time (bit-packed), for in-memory and streamed runs alike:
    one writer, so both give the same tensors and the same metadata. Shapes, packing and bit order
    go into the single ``polyprune`` metadata entry (a JSON object with sorted keys)."""

    def __init__(self, path: str | Path, metadata: dict[str, str] | None = None):
        from .tensorfile import SafetensorsWriter
        self.meta = {"format": MASK_FORMAT, "convention": "True=kept", "packing": "bits",
                     "bit_order": BIT_ORDER, **(metadata or {})}
        self.shapes: dict[str, list[int]] = {}
        self.writer = SafetensorsWriter(path)

    def add(self, name: str, mask: torch.Tensor) -> None:
        self.shapes[name] = list(mask.shape)
        self.writer.add(name, pack_bits(mask))

    def close(self) -> None:
        """Write the file with its data in name order, whatever the order of :meth:`add`, so a streamed
        run's masks file is byte for byte the in-memory run's."""
        self.writer.metadata = {"polyprune": json.dumps({**self.meta, "shapes": dict(sorted(self.shapes.items()))},
                                                        sort_keys=True)}
        self.writer.close(sort=True)

    def abort(self) -> None:
        self.writer.abort()


def save_masks(masks: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write masks (bool, True = kept) bit-packed to a safetensors file atomically."""
    from .io import atomic_file
    with atomic_file(path) as tmp:
        w = MaskWriter(tmp, metadata)
        try:
            for k in sorted(masks):
                w.add(k, masks[k])
            w.close()
        except BaseException:
            w.abort()
            raise


def mask_metadata(path: str | Path) -> dict:
    """The ``polyprune`` metadata of a masks file (``{}`` for files without it)."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("polyprune", "{}"))


def _as_bool(name: str, t: torch.Tensor, p: Path) -> torch.Tensor:
    """A one-value-per-weight mask (the older layout) as bool; values other than 0/1 are refused so
    that a soft mask (e.g. scores in [0, 1)) is never applied as keep-all."""
    if t.dtype == torch.bool:
        return t
    if not bool(((t == 0) | (t == 1)).all()):
        raise UserError(f"mask {name} in {p} holds values other than 0 and 1 ({t.dtype}): masks must be "
                        f"boolean (True = kept); binarise it before saving")
    return t != 0


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Read masks written by :func:`save_masks` (a run folder or the .safetensors file) as
    ``{name: bool tensor}``; bit-packed and older one-byte-per-weight files alike."""
    from safetensors import SafetensorError, safe_open
    p = Path(path)
    if p.is_dir():
        p = p / "masks.safetensors"
    if not p.is_file():
        raise UserError(f"mask file {p} does not exist: give a run folder or a masks.safetensors file")
    try:
        with safe_open(str(p), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("polyprune", "{}"))
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"mask file {p} cannot be read ({str(e).splitlines()[0]}): it is truncated or not a "
                        f"masks file; re-run the prune") from None
    if meta.get("packing") != "bits":
        return {k: _as_bool(k, v, p) for k, v in raw.items()}
    if meta.get("bit_order", BIT_ORDER) != BIT_ORDER:
        raise UserError(f"mask file {p} uses bit order {meta.get('bit_order')!r}; this version reads {BIT_ORDER!r}")
    shapes = meta.get("shapes", {})
    out = {}
    for k, v in raw.items():
        if k not in shapes:
            raise UserError(f"mask file {p} has no shape for {k}: the file is damaged; re-run the prune")
        n = 1
        for d in shapes[k]:
            n *= int(d)
        if v.dtype != torch.uint8 or v.dim() != 1 or v.numel() != -(-n // 8):
            raise UserError(f"mask {k} in {p} has {v.numel()} {v.dtype} bytes for shape {tuple(shapes[k])} "
                            f"(expected {-(-n // 8)} uint8): the file is damaged; re-run the prune")
        out[k] = unpack_bits(v, shapes[k])
    return out


class SparsityCounter:
    """Pruned / total weights per matrix, counted as each mask is written: the one sparsity count of
    a run (in-memory and streamed alike; :func:`sparsity_report` uses it for a dict of masks)."""

    def __init__(self):
        self.counts: dict[str, tuple[int, int]] = {}  # matrix -> (pruned, total)

    def add(self, name: str, mask: torch.Tensor) -> None:
        self.counts[name] = (int((~mask.to(torch.bool)).sum()), mask.numel())

    def report(self) -> dict:
        """Achieved sparsity overall and per matrix (share of False)."""
        total = sum(t for _, t in self.counts.values())
        pruned = sum(p for p, _ in self.counts.values())
        return {"overall": pruned / total if total else 0.0, "pruned": pruned, "total": total,
                "per_matrix": {k: p / t if t else 0.0 for k, (p, t) in self.counts.items()}}


def sparsity_report(masks: dict[str, torch.Tensor]) -> dict:
    """Achieved sparsity overall and per matrix (share of False)."""
    counter = SparsityCounter()
    for k, v in masks.items():
        counter.add(k, v)
    return counter.report()
