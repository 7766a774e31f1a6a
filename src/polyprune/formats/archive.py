"""Reading an export back: dense tensors of any exported folder, and archives as models."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from ..errors import UserError
from ..tensorfile import Checkpoint
from .compress import ARCHIVE_DIR, ARCHIVE_MODEL_TYPE, SPARSE, bitmask_decompress


def decompress(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Dense ``(name, tensor)`` pairs of an exported folder: quantised modules through the
    compressed-tensors library's decompressor, bitmask layouts through its bit-unpacking helper."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") == ARCHIVE_MODEL_TYPE:
        arch = config["polyprune_archive"]
        cfg = {"format": arch["format"], "sparsity_config": arch["sparsity_config"]}
        ckpt = Checkpoint(folder / ARCHIVE_DIR)
    else:
        cfg = config.get("quantization_config") or {"format": "dense"}
        ckpt = Checkpoint(folder)
    fmt = cfg.get("format")
    sparse_fmt = (cfg.get("sparsity_config") or {}).get("format")
    groups: dict[str, dict[str, str]] = {}
    plain = []
    suffixes = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "shape", "compressed",
                "bitmask", "row_offsets")
    for k in ckpt.keys():
        mod, _, leaf = k.rpartition(".")
        if leaf in suffixes:
            groups.setdefault(mod, {})[leaf] = k
        elif fmt == "int-quantized" and leaf == "weight" and f"{mod}.weight_scale" in ckpt:
            groups.setdefault(mod, {})[leaf] = k
        else:
            plain.append(k)
    scheme = None
    if fmt in ("pack-quantized", "int-quantized"):
        qc = QuantizationConfig.model_validate({k: v for k, v in cfg.items() if k in QuantizationConfig.model_fields})
        scheme = next(iter(qc.config_groups.values()))
    for mod, parts in groups.items():
        t = {leaf: ckpt.load(k) for leaf, k in parts.items()}
        if "bitmask" in t:
            if sparse_fmt not in SPARSE:
                raise UserError(f"{folder}: bitmask tensors but sparsity_config format {sparse_fmt!r}")
            yield f"{mod}.weight", bitmask_decompress(t)
        else:
            comp = BaseCompressor.get_value_from_registry(fmt)
            yield f"{mod}.weight", comp.decompress(t, scheme)["weight"]
    for k in plain:
        yield k, ckpt.load(k)


def is_archive(folder: str | Path) -> bool:
    """Whether ``folder`` is a polyprune sparse archive (see the module docstring)."""
    f = Path(folder) / "config.json"
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("model_type") == ARCHIVE_MODEL_TYPE
    except (json.JSONDecodeError, AttributeError):
        return False


def load_archive(folder: str | Path, dtype=None, device: str | None = None, tokenizer=False):
    """``(model, tokenizer)`` of a sparse archive: the base architecture from the stored config, the
    weights decompressed (bitmask layouts back to dense matrices with the pruned zeros)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from ..model import load_tokenizer, resolve_device, resolve_dtype
    folder = Path(folder)
    arch = json.loads((folder / "config.json").read_text())["polyprune_archive"]
    base = dict(arch["base_config"])
    config = AutoConfig.for_model(**base)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dt)
    state = {k: v.to(dt) if v.is_floating_point() else v for k, v in decompress(folder)}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"{folder}: the archive's tensors do not match its config ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected): re-export it")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.to(dev).eval()
    model.requires_grad_(False)
    tok = load_tokenizer(str(folder)) if tokenizer is False else tokenizer
    model.polyprune_source = str(folder)
    return model, tok
