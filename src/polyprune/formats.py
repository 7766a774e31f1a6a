"""Save pruned and/or quantised models in the compressed-tensors format (vLLM, transformers).

Formats (``quantization_config`` in ``config.json``, ``quant_method: compressed-tensors``):

- ``pack-quantized``: int2–int8 codes packed into int32 with per-group/per-row scales (and zero
  points when asymmetric), written by compressed-tensors' own ``PackedQuantizationCompressor``;
- ``int-quantized``: int8 codes in int8 tensors (``IntQuantizationCompressor``);
- ``sparse-bitmask``: kept values (1-D, row-major) + bit-packed mask + row offsets + shape;
- ``sparse-24-bitmask``: 2 kept values of every 4 ([rows, cols/2]) + bit-packed mask + shape.

The sparse layouts are compressed-tensors' (≤ 0.14) ``BitmaskCompressor`` / ``Sparse24BitMaskCompressor``
tensor layouts under ``sparsity_config``; compressed-tensors 0.20 keeps their configs and bit-packing
helpers (used here) but no longer ships the sparse compressors, so :func:`decompress` reads them
with those helpers. Masks come from the run (never from ``W == 0``), so kept exact zeros survive.
Pruned + quantised runs are stored as quantised with a ``dense`` ``sparsity_config`` (the zeros are
exact codes). Everything is written tensor by tensor: the model is never materialised.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import UserError
from .stream import Checkpoint, SafetensorsWriter, WEIGHT_FILE

log = logging.getLogger(__name__)

INFO_FORMAT = "polyprune-method-info"
FORMATS = ("compressed-tensors", "dense", "sparse-bitmask", "sparse-24-bitmask", "pack-quantized", "int-quantized")


# ---------------------------------------------------------------------------------------------
# method info (e.g. GPTQ scales) in a run folder

def info_items(name: str, info: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split one matrix's ``MethodResult.info`` into tensors (``name::key``) and JSON scalars."""
    tensors, scalars = {}, {}
    for k, v in info.items():
        if isinstance(v, torch.Tensor):
            tensors[f"{name}::{k}"] = v.detach().contiguous().cpu()
        elif isinstance(v, (int, float, str, bool)) or v is None:
            scalars[k] = v
    return tensors, scalars


def save_method_info(info: dict[str, dict], path: str | Path) -> None:
    """Write ``{matrix name: MethodResult.info}`` to one safetensors file (scalars in its metadata)."""
    w = SafetensorsWriter(path, {"format": INFO_FORMAT})
    scalars = {}
    try:
        for name in sorted(info):
            ts, sc = info_items(name, info[name])
            for k, t in ts.items():
                w.add(k, t)
            scalars[name] = sc
    except BaseException:
        w.abort()
        raise
    w.metadata["scalars"] = json.dumps(scalars)
    w.close()


def load_method_info(path: str | Path) -> dict[str, dict]:
    from safetensors import safe_open
    p = Path(path)
    if p.is_dir():
        p = p / "info.safetensors"
    if not p.is_file():
        return {}
    out: dict[str, dict] = {}
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
        for name, sc in json.loads(meta.get("scalars", "{}")).items():
            out.setdefault(name, {}).update(sc)
        for key in f.keys():
            name, _, k = key.rpartition("::")
            out.setdefault(name, {})[k] = f.get_tensor(key)
    return out


# ---------------------------------------------------------------------------------------------
# per-tensor compression (pure)

def _scheme(info: dict):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    gs = int(info.get("group_size", -1))
    args = QuantizationArgs(num_bits=int(info["bits"]), type="int", symmetric=bool(info["sym"]),
                            strategy="group" if gs > 0 else "channel", group_size=gs if gs > 0 else None,
                            actorder="weight" if info.get("act_order") else None)
    return QuantizationScheme(targets=["Linear"], weights=args)


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
    return comp.compress(quant_state(weight, info, dtype), _scheme(info))


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
    if requested not in FORMATS:
        raise UserError(f"unknown format {requested!r}: choose one of {', '.join(FORMATS)}")
    if requested == "compressed-tensors":
        if quantised:
            return "pack-quantized"
        if not any_pruned:
            return "dense"
        return "sparse-24-bitmask" if structured_24 else "sparse-bitmask"
    if requested in ("pack-quantized", "int-quantized"):
        if not quantised:
            raise UserError(f"format {requested} stores quantised weights but this run is not quantised: "
                            f"use sparse-bitmask (or compressed-tensors), or prune with --method gptq")
        if requested == "int-quantized" and int(quantised["bits"]) != 8:
            raise UserError(f"int-quantized stores 8-bit codes but the run has {quantised['bits']}-bit weights: "
                            f"use pack-quantized")
    if requested in SPARSE and quantised:
        raise UserError(f"format {requested} stores float values but this run is quantised: use pack-quantized")
    if requested == "sparse-24-bitmask" and not structured_24:
        raise UserError("format sparse-24-bitmask needs 2:4 masks: use sparse-bitmask, or prune with --pattern 2:4")
    return requested


# ---------------------------------------------------------------------------------------------
# export

def _run_sources(run: Path):
    """(checkpoint of final or base weights, weights already final?, masks file, kept-values file)."""
    from .run import is_run, read_config
    from .stream import local_checkpoint
    if not is_run(run):
        raise UserError(f"{run} is not a run folder (no config.yaml + masks.safetensors): give a prune --out folder")
    if (run / "model").is_dir():
        return Checkpoint(run / "model"), True, run / "model"
    cfg = read_config(run)
    src = local_checkpoint(cfg.model)
    return Checkpoint(src), False, src


def export_compressed(run: str | Path, out: str | Path, fmt: str = "compressed-tensors", *, dtype: str | None = None,
                      force: bool = False) -> dict:
    """Write the run's model to ``out`` in a compressed-tensors format, tensor by tensor, atomically.
    Returns a report with bytes on disk (compressed vs the dense checkpoint)."""
    from safetensors import safe_open
    from .model import DTYPES
    from .run import staged_dir, write_json
    run = Path(run)
    ckpt, final, src = _run_sources(run)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    info = load_method_info(run)
    quant = {n: i for n, i in info.items() if "scale" in i and "bits" in i}
    mf = safe_open(str(run / "masks.safetensors"), "pt")
    mask_names = list(mf.keys())
    missing = [n for n in mask_names if n not in ckpt]
    if missing:
        raise UserError(f"masked matrix {missing[0]} is not in the checkpoint {src}: the run belongs to another model")
    kept_file = run / "weights.safetensors"
    kf = safe_open(str(kept_file), "pt") if (kept_file.is_file() and not final) else None
    # what the run is: decided from the masks' shapes and counts (one pass, one matrix at a time)
    any_pruned, is24 = False, True
    for n in mask_names:
        m = mf.get_tensor(n)
        any_pruned |= not bool(m.all())
        r, c = m.shape
        is24 &= c % 4 == 0 and bool((m.reshape(r, -1, 4).sum(-1) == 2).all())
    first_q = next(iter(quant.values()), None)
    chosen = choose_format(fmt, first_q, is24 and any_pruned, any_pruned)
    if chosen in ("pack-quantized", "int-quantized"):
        kinds = {(int(i["bits"]), int(i.get("group_size", -1)), bool(i["sym"]), bool(i.get("act_order"))) for i in quant.values()}
        if len(kinds) > 1:
            raise UserError("matrices were quantised with different settings: one quantisation scheme per export")
        from .quant import quant_spec
        for n, i in quant.items():
            quant_spec(int(i["bits"]), int(i.get("group_size", -1)), bool(i["sym"]), ckpt.shape(n)[-1])
    out_dtype = DTYPES[dtype] if dtype else None
    report = {"format": chosen, "source": str(src), "dense_bytes": 0, "compressed_bytes": 0,
              "matrices": len(mask_names), "dense_matrix_bytes": 0, "compressed_matrix_bytes": 0}
    with staged_dir(Path(out), force) as tmp:
        w = SafetensorsWriter(tmp / "model.safetensors", {"format": "pt"})
        try:
            for name in ckpt.keys():
                src_dt = ckpt.dtype(name)
                dt = out_dtype if (out_dtype is not None and src_dt.is_floating_point) else src_dt
                dense_bytes = ckpt.nbytes([name]) * dt.itemsize // src_dt.itemsize
                report["dense_bytes"] += dense_bytes
                before = w.nbytes
                if name not in mask_names or chosen == "dense":
                    if dt == src_dt and (name not in mask_names or final):
                        w.add_from(name, ckpt)
                    else:
                        w.add(name, _final_weight(ckpt, name, mf, kf, final).to(dt) if name in mask_names
                              else ckpt.load(name).to(dt))
                    report["compressed_bytes"] += w.nbytes - before
                    continue
                weight = _final_weight(ckpt, name, mf, kf, final)
                module = name[: -len(".weight")] if name.endswith(".weight") else name
                if chosen in SPARSE:
                    kept = mf.get_tensor(name).to(torch.bool)
                    parts = SPARSE[chosen](weight.to(dt), kept)
                    for k, t in parts.items():
                        w.add(f"{module}.{k}", t)
                elif name in quant:
                    parts = compress_quantized(weight, quant[name], chosen, dt)
                    for k, t in parts.items():
                        w.add(f"{module}.{k}", t)
                else:  # a dense (kept) layer of a quantised run: listed in "ignore"
                    w.add(name, weight.to(dt))
                report["dense_matrix_bytes"] += dense_bytes
                report["compressed_matrix_bytes"] += w.nbytes - before
                report["compressed_bytes"] += w.nbytes - before
        except BaseException:
            w.abort()
            raise
        w.close()
        config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
        if out_dtype is not None:
            config["torch_dtype"] = config["dtype"] = str(out_dtype).replace("torch.", "")
        config["quantization_config"] = compression_config(chosen, quant, mask_names, mf, config)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for f in sorted(src.iterdir()):
            if f.is_file() and not WEIGHT_FILE.match(f.name) and f.name != "config.json" and not f.name.startswith("."):
                (tmp / f.name).write_bytes(f.read_bytes())
        report["ratio"] = report["compressed_bytes"] / report["dense_bytes"]
        report["matrix_ratio"] = (report["compressed_matrix_bytes"] / report["dense_matrix_bytes"]
                                  if report["dense_matrix_bytes"] else 1.0)
        write_json(tmp / "compression_report.json", report)
    return report


def _final_weight(ckpt: Checkpoint, name: str, mf, kf, final: bool) -> torch.Tensor:
    """The run's weight of one matrix: from model/ as is, or base × mask with kept values restored."""
    W = ckpt.load(name)
    if final:
        return W
    m = mf.get_tensor(name).to(torch.bool)
    W = W * m
    if kf is not None and name in kf.keys():
        W[m] = kf.get_tensor(name).to(W.dtype)
    return W


def linear_modules(config: dict) -> list[str]:
    """Names of every Linear / Conv1D module of the model described by ``config`` (built on meta)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from .masks import is_conv1d
    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "quantization_config"})
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or is_conv1d(m)]


def compression_config(fmt: str, quant: dict[str, dict], mask_names: list[str], mf, config: dict) -> dict:
    """``config.json["quantization_config"]`` as compressed-tensors writes it (``update_config``)."""
    import compressed_tensors
    from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig
    total = pruned = 0
    for n in mask_names:
        m = mf.get_tensor(n)
        total += m.numel()
        pruned += int((~m).sum())
    sparsity = pruned / total if total else 0.0
    modules = sorted({n[: -len(".weight")] for n in mask_names})
    sparsity_cfg: dict = {}
    if fmt in SPARSE:
        cls = BitmaskConfig if fmt == "sparse-bitmask" else Sparse24BitMaskConfig
        sparsity_cfg = cls(global_sparsity=sparsity, targets=modules, ignore=[],
                           sparsity_structure="2:4" if fmt == "sparse-24-bitmask" else "unstructured").model_dump()
    elif quant and pruned:
        sparsity_cfg = {"format": "dense", "global_sparsity": sparsity, "targets": modules, "ignore": [],
                        "sparsity_structure": "unstructured", "registry_requires_subclass": False}
    data: dict[str, Any] = {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors",
                            "sparsity_config": sparsity_cfg, "transform_config": {}}
    if fmt in ("pack-quantized", "int-quantized"):
        from compressed_tensors.quantization import QuantizationConfig
        first = next(iter(quant.values()))
        ignore = sorted(set(linear_modules(config)) - {n[: -len(".weight")] for n in quant})
        qc = QuantizationConfig(config_groups={"group_0": _scheme(first)}, format=fmt,
                                quantization_status="compressed", ignore=ignore)
        data.update(qc.model_dump(exclude=["quant_method"]))
        data["quantization_status"] = "compressed"
    elif fmt == "dense" or not quant:
        data.setdefault("format", fmt if fmt != "dense" else "dense")
    return data


def decompress(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Dense ``(name, tensor)`` pairs of an exported folder: quantised modules through the
    compressed-tensors library's decompressor, bitmask layouts through its bit-unpacking helper."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())["quantization_config"]
    fmt = cfg.get("format")
    sparse_fmt = (cfg.get("sparsity_config") or {}).get("format")
    ckpt = Checkpoint(folder)
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
