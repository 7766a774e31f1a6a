"""Per-tensor codecs (pure): compressed-tensors' quantised state and bitmask layouts, and the choice
of storage format for a run."""
from __future__ import annotations

import torch

from ..errors import UserError

FORMATS = ("auto", "dense", "pack-quantized", "int-quantized", "sparse-bitmask", "sparse-24-bitmask")
ALIASES = {"compressed-tensors": "auto", "hf": "dense"}
QUANTISED = ("pack-quantized", "int-quantized")
ARCHIVE_MODEL_TYPE = "polyprune-archive"
ARCHIVE_DIR = "archive"

# ---------------------------------------------------------------------------------------------
# per-tensor compression (pure)

def _scheme(info: dict, fmt: str | None = None):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    gs = int(info.get("group_size", -1))
    args = QuantizationArgs(num_bits=int(info["bits"]), type="int", symmetric=bool(info["sym"]),
                            strategy="group" if gs > 0 else "channel", group_size=gs if gs > 0 else None,
                            actorder="weight" if info.get("act_order") else None)
    # the scheme's own format: compressed-tensors 0.20 reads it per module (absent = pack-quantized)
    return QuantizationScheme(targets=["Linear"], weights=args, format=fmt)


def quant_state(weight: torch.Tensor, info: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """compressed-tensors' per-module state: weight, weight_scale [rows, groups], signed zero point."""
    half = 2 ** (int(info["bits"]) - 1)
    state = {"weight": weight.to(dtype), "weight_scale": info["scale"].to(dtype)}
    if not info["sym"]:
        state["weight_zero_point"] = (info["zero"].to(torch.int16) - half).to(torch.int8)
    return state


def compress_quantized(weight: torch.Tensor, info: dict, fmt: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Local-name compressed state (``weight_packed``/``weight``, ``weight_scale`` …) by the library."""
    from compressed_tensors.compressors import BaseCompressor
    comp = BaseCompressor.get_value_from_registry(fmt)
    return comp.compress(quant_state(weight, info, dtype), _scheme(info, fmt))


def bitmask_compress(weight: torch.Tensor, kept: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sparse-bitmask`` tensors (local names) of a matrix given its kept mask."""
    from compressed_tensors.utils import pack_bitmasks
    counts = kept.sum(dim=-1)
    return {"shape": torch.tensor(list(weight.shape)), "compressed": weight[kept].contiguous(),
            "bitmask": pack_bitmasks(kept.to(torch.uint8)),
            "row_offsets": torch.cumsum(counts, 0) - counts}


def sparse24_compress(weight: torch.Tensor, kept: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sparse-24-bitmask`` tensors: exactly 2 kept values of every 4 consecutive inputs."""
    from compressed_tensors.utils import pack_bitmasks
    rows, cols = weight.shape
    if cols % 4 or not bool((kept.reshape(rows, -1, 4).sum(-1) == 2).all()):
        raise UserError("these masks are not 2:4 (2 kept of every 4 consecutive inputs): store them as "
                        "sparse-bitmask, or prune with --pattern 2:4")
    return {"shape": torch.tensor([rows, cols]).reshape(-1, 1),
            "compressed": weight[kept].reshape(rows, cols // 2).contiguous(),
            "bitmask": pack_bitmasks(kept.to(torch.uint8))}


SPARSE = {"sparse-bitmask": bitmask_compress, "sparse-24-bitmask": sparse24_compress}


def bitmask_decompress(t: dict[str, torch.Tensor]) -> torch.Tensor:
    from compressed_tensors.utils import unpack_bitmasks
    shape = [int(x) for x in t["shape"].flatten().tolist()]
    kept = unpack_bitmasks(t["bitmask"], shape)
    out = torch.zeros(shape, dtype=t["compressed"].dtype)
    out[kept] = t["compressed"].flatten()
    return out


# ---------------------------------------------------------------------------------------------
# choosing the format

def choose_format(requested: str, quantised: dict | None, structured_24: bool, any_pruned: bool) -> str:
    """The storage format for a run; a format the run cannot be stored in is a UserError."""
    requested = ALIASES.get(requested, requested)
    if requested not in FORMATS:
        raise UserError(f"unknown format {requested!r}: choose one of {', '.join(FORMATS)}")
    if requested == "auto":
        return "pack-quantized" if quantised else "dense"
    if requested in QUANTISED:
        if not quantised:
            raise UserError(f"format {requested} stores quantised weights but this run is not quantised: "
                            f"use dense (a plain Hugging Face checkpoint), or prune with --method gptq")
        if requested == "int-quantized" and int(quantised["bits"]) != 8:
            raise UserError(f"int-quantized stores 8-bit codes but the run has {quantised['bits']}-bit weights: "
                            f"use pack-quantized")
    if requested in SPARSE and quantised:
        raise UserError(f"format {requested} stores float values but this run is quantised: use pack-quantized")
    if requested == "sparse-24-bitmask" and not structured_24:
        raise UserError("format sparse-24-bitmask needs 2:4 masks but this run is not 2:4: use sparse-bitmask, "
                        "or prune with --pattern 2:4")
    return requested
