"""``export_compressed``: a run written as a dense Hugging Face checkpoint, a compressed-tensors
quantised checkpoint, or a polyprune archive, tensor by tensor where the format allows."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..tensorfile import WEIGHT_FILE, Checkpoint, SafetensorsWriter, load_method_info
from .compress import (ALIASES, ARCHIVE_DIR, ARCHIVE_MODEL_TYPE, FORMATS, QUANTISED, SPARSE, _scheme,
                       choose_format, compress_quantized)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# export

def _run_sources(run: Path):
    """(checkpoint of final or base weights, weights already final?, its folder, run config)."""
    from ..run import base_folder, check_base, is_run, read_config
    if not is_run(run):
        raise UserError(f"{run} is not a run folder (no config.yaml + masks.safetensors): give a prune --out folder")
    cfg = read_config(run)
    if (run / "model").is_dir():
        return Checkpoint(run / "model"), True, run / "model", cfg
    src = base_folder(cfg.model)
    if src is None:  # a hub id not in the local cache: fetched (safetensors + configs) as streaming does
        from ..stream import local_checkpoint
        src = local_checkpoint(cfg.model)
    check_base(cfg, run, src)
    return Checkpoint(src), False, src, cfg


def check_masks_fit(mf, ckpt: Checkpoint, src) -> list[str]:
    """The masked matrices, each present in the checkpoint with the mask's shape."""
    from ..masks import mask_metadata
    names = list(mf.keys())
    shapes = mask_metadata(mf.path).get("shapes") if hasattr(mf, "path") else None
    for n in names:
        if n not in ckpt:
            raise UserError(f"masked matrix {n} is not in the checkpoint {src}: the masks were made for another model")
        shape = tuple(shapes[n]) if shapes else tuple(mf.get_slice(n).get_shape())
        if shape != tuple(ckpt.shape(n)):
            raise UserError(f"mask {n} has shape {shape} but the checkpoint {src} has {tuple(ckpt.shape(n))}: "
                            f"the masks were made for another model")
    return names


class _Masks:
    """Masks of a run read one matrix at a time (packed or one-byte files), as ``safe_open``."""

    def __init__(self, path: Path):
        from safetensors import safe_open
        from ..masks import mask_metadata
        self.path = path
        self.meta = mask_metadata(path)
        self.f = safe_open(str(path), "pt")

    def keys(self):
        return list(self.f.keys())

    def get_slice(self, name):
        return self.f.get_slice(name)

    def get_tensor(self, name: str) -> torch.Tensor:
        from ..masks import _as_bool, unpack_bits
        t = self.f.get_tensor(name)
        if self.meta.get("packing") == "bits":
            return unpack_bits(t, self.meta["shapes"][name])
        return _as_bool(name, t, self.path)


def dense_sizes(ckpt: Checkpoint) -> dict[str, int]:
    """Bytes of the checkpoint with every float tensor in fp32 / bf16 (other tensors as stored)."""
    import numpy as np
    out = {"fp32": 0, "bf16": 0}
    for name in ckpt.keys():
        dt, n = ckpt.dtype(name), int(np.prod(ckpt.shape(name))) if ckpt.shape(name) else 1
        out["fp32"] += n * (4 if dt.is_floating_point else dt.itemsize)
        out["bf16"] += n * (2 if dt.is_floating_point else dt.itemsize)
    return out


def load_commands(out: Path, fmt: str) -> dict[str, str]:
    """How to load an export: one line per loader."""
    if fmt in SPARSE:
        return {"polyprune": f"python -c \"import polyprune as pp; model, tok = pp.load_model('{out}')\"",
                "transformers": "not loadable (a polyprune archive; export --format dense for transformers)",
                "vllm": "not loadable (vLLM dropped bitmask sparsity; export --format dense for vLLM)"}
    return {"transformers": f"python -c \"from transformers import AutoModelForCausalLM; "
                            f"model = AutoModelForCausalLM.from_pretrained('{out}')\"",
            "vllm": f"vllm serve {out}" + ("" if fmt == "dense" else "  # W4A16/W8A16 kernels need a GPU")}


def export_compressed(run: str | Path, out: str | Path, fmt: str = "auto", *, dtype: str | None = None,
                      force: bool = False) -> dict:
    """Write the run's model to ``out`` in ``fmt`` atomically (staged, then renamed), with a model
    card (README.md). Every check (format, base hash, masks vs model, --out) runs before anything
    is written. Returns a report with bytes on disk vs the dense fp32 / bf16 checkpoint."""
    from ..model import DTYPES
    run, out = Path(run), Path(out)
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if out.exists() and not force:
        raise UserError(f"output folder {out} already exists: choose another --out or pass --force")
    ckpt, final, src, cfg = _run_sources(run)
    info = load_method_info(run)
    quant = {n: i for n, i in info.items() if "scale" in i and "bits" in i}
    mf = _Masks(run / "masks.safetensors")
    mask_names = check_masks_fit(mf, ckpt, src)
    # what the run is: decided from the masks' shapes and counts (one pass, one matrix at a time)
    any_pruned, is24 = False, True
    for n in mask_names:
        m = mf.get_tensor(n)
        any_pruned |= not bool(m.all())
        r, c = m.shape
        is24 &= c % 4 == 0 and bool((m.reshape(r, -1, 4).sum(-1) == 2).all())
    first_q = next(iter(quant.values()), None)
    chosen = choose_format(fmt, first_q, is24 and any_pruned, any_pruned)
    if chosen in QUANTISED:
        kinds = {(int(i["bits"]), int(i.get("group_size", -1)), bool(i["sym"]), bool(i.get("act_order"))) for i in quant.values()}
        if len(kinds) > 1:
            raise UserError("matrices were quantised with different settings: one quantisation scheme per export")
        from ..quant import quant_spec
        for n, i in quant.items():
            quant_spec(int(i["bits"]), int(i.get("group_size", -1)), bool(i["sym"]), ckpt.shape(n)[-1])
    out_dtype = DTYPES[dtype] if dtype else None
    from ..run import staged_dir, write_json
    with staged_dir(out, force) as tmp:
        if chosen == "dense":
            report = _write_dense(run, tmp, ckpt, out_dtype)
        else:
            report = _write_tensors(tmp, chosen, ckpt, final, src, mf, mask_names, quant, out_dtype, run, is24)
        report.update({"format": chosen, "source": str(src), "matrices": len(mask_names), "dtype": dtype})
        sizes = dense_sizes(ckpt)
        report["dense_fp32_bytes"], report["dense_bf16_bytes"] = sizes["fp32"], sizes["bf16"]
        report["on_disk_bytes"] = sum(f.stat().st_size for f in tmp.rglob("*.safetensors"))
        report["ratio_fp32"] = report["on_disk_bytes"] / sizes["fp32"]
        report["ratio_bf16"] = report["on_disk_bytes"] / sizes["bf16"]
        report["ratio"] = report["compressed_bytes"] / report["dense_bytes"]
        report["matrix_ratio"] = (report["compressed_matrix_bytes"] / report["dense_matrix_bytes"]
                                  if report["dense_matrix_bytes"] else 1.0)
        report["load"] = load_commands(out, chosen)
        from ..card import write_card
        write_card(tmp / "README.md", run, cfg, chosen, report)
        write_json(tmp / "compression_report.json", report)
    return report


def _write_dense(run: Path, tmp: Path, ckpt: Checkpoint, out_dtype) -> dict:
    """A plain Hugging Face checkpoint by ``save_pretrained``: the run rebuilt (base × masks with
    kept values, or its saved model/) in the chosen dtype (default: the checkpoint's)."""
    from ..run import load_run_or_model
    floats = [ckpt.dtype(n) for n in ckpt.keys() if ckpt.dtype(n).is_floating_point]
    dt = out_dtype or (floats[0] if floats else torch.float32)
    model, tok, _ = load_run_or_model(str(run), dtype=str(dt).replace("torch.", ""), device="cpu")
    model.config.dtype = dt
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(tmp, max_shard_size="5GB")
    if tok is not None:
        tok.save_pretrained(tmp)
    written = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    dense = sum(ckpt.nbytes([n]) * (dt.itemsize if ckpt.dtype(n).is_floating_point else ckpt.dtype(n).itemsize)
                // ckpt.dtype(n).itemsize for n in ckpt.keys())
    return {"dense_bytes": dense, "compressed_bytes": written, "dense_matrix_bytes": 0, "compressed_matrix_bytes": 0}


def _write_tensors(tmp: Path, chosen: str, ckpt: Checkpoint, final: bool, src: Path, mf, mask_names: list[str],
                   quant: dict, out_dtype, run: Path, is24: bool) -> dict:
    """compressed-tensors quantised checkpoints and polyprune archives, tensor by tensor."""
    from safetensors import safe_open
    archive = chosen in SPARSE
    kept_file = run / "weights.safetensors"
    kf = safe_open(str(kept_file), "pt") if (kept_file.is_file() and not final) else None
    report = {"dense_bytes": 0, "compressed_bytes": 0, "dense_matrix_bytes": 0, "compressed_matrix_bytes": 0}
    wdir = tmp / ARCHIVE_DIR if archive else tmp
    wdir.mkdir(exist_ok=True)
    w = SafetensorsWriter(wdir / "model.safetensors", {"format": "pt"})
    masked = set(mask_names)
    try:
        for name in ckpt.keys():
            src_dt = ckpt.dtype(name)
            dt = out_dtype if (out_dtype is not None and src_dt.is_floating_point) else src_dt
            dense_bytes = ckpt.nbytes([name]) * dt.itemsize // src_dt.itemsize
            report["dense_bytes"] += dense_bytes
            before = w.nbytes
            if name not in masked:
                if dt == src_dt:
                    w.add_from(name, ckpt)
                else:
                    w.add(name, ckpt.load(name).to(dt))
                report["compressed_bytes"] += w.nbytes - before
                continue
            weight = _final_weight(ckpt, name, mf, kf, final)
            module = name[: -len(".weight")] if name.endswith(".weight") else name
            if archive:
                parts = SPARSE[chosen](weight.to(dt), mf.get_tensor(name))
            elif name in quant:
                parts = compress_quantized(weight, quant[name], chosen, dt)
            else:  # a dense (kept) layer of a quantised run: listed in "ignore"
                parts = None
                w.add(name, weight.to(dt))
            for k, t in (parts or {}).items():
                w.add(f"{module}.{k}", t)
            report["dense_matrix_bytes"] += dense_bytes
            report["compressed_matrix_bytes"] += w.nbytes - before
            report["compressed_bytes"] += w.nbytes - before
    except BaseException:
        w.abort()
        raise
    w.close()
    config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    config.pop("quantization_config", None)
    if out_dtype is not None:
        config["torch_dtype"] = config["dtype"] = str(out_dtype).replace("torch.", "")
    qc = compression_config(chosen, quant, mask_names, mf, config, is24)
    if archive:
        import polyprune
        config = {"model_type": ARCHIVE_MODEL_TYPE, "architectures": [],
                  "polyprune_archive": {"format": chosen, "polyprune_version": polyprune.__version__,
                                        "tensors": f"{ARCHIVE_DIR}/model.safetensors",
                                        "sparsity_config": qc["sparsity_config"], "base_config": config},
                  "_note": "a polyprune sparse archive: load it with polyprune.load_model(folder); "
                           "transformers and vLLM cannot read this layout"}
    else:
        config["quantization_config"] = qc
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for f in sorted(src.iterdir()):
        if f.is_file() and not WEIGHT_FILE.match(f.name) and f.name not in ("config.json", "README.md") \
                and not f.name.startswith("."):
            (tmp / f.name).write_bytes(f.read_bytes())
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
    from ..masks import is_conv1d
    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "quantization_config"})
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or is_conv1d(m)]


def compression_config(fmt: str, quant: dict[str, dict], mask_names: list[str], mf, config: dict,
                       is24: bool = False) -> dict:
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
                        "sparsity_structure": "2:4" if is24 else "unstructured", "registry_requires_subclass": False}
    data: dict[str, Any] = {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors",
                            "sparsity_config": sparsity_cfg, "transform_config": {}}
    if fmt in ("pack-quantized", "int-quantized"):
        from compressed_tensors.quantization import QuantizationConfig
        first = next(iter(quant.values()))
        ignore = sorted(set(linear_modules(config)) - {n[: -len(".weight")] for n in quant})
        qc = QuantizationConfig(config_groups={"group_0": _scheme(first, fmt)}, format=fmt,
                                quantization_status="compressed", ignore=ignore)
        data.update(qc.model_dump(exclude=["quant_method"]))
        data["quantization_status"] = "compressed"
    elif fmt == "dense" or not quant:
        data.setdefault("format", fmt if fmt != "dense" else "dense")
    return data
