"""Model plumbing: load (hub id, local dir, embedded demo), find decoder layers generically,
list prunable Linear/Conv1D weights."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .masks import is_conv1d

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = ("embedded", "gemma-3-270m")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_model_path(name: str) -> str:
    """Local directory, hub id, or the embedded demo model (converted once, then cached)."""
    if name in EMBEDDED_ALIASES:
        from .embedded import ensure_embedded
        return str(ensure_embedded())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"model directory {p} has no config.json: give a Hugging Face model folder")
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model path {name} does not exist: give a local model folder, a hub id or 'embedded'")
    return name


def load_tokenizer(name: str):
    """The model's tokenizer, or ``None`` (with a warning) when it has none."""
    from transformers import AutoTokenizer
    path = resolve_model_path(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        log.warning("no tokenizer for %s (%s)", name, str(e).splitlines()[0])
        return None


def check_device(device: str | torch.device | None) -> torch.device:
    """The compute device of ``--device`` (``auto``: CUDA when visible); bad input is one clear line."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is visible; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
                            f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type not in ("cpu", "meta"):
        raise UserError(f"--device {device}: pruning runs on cpu or cuda devices")
    return dev


def check_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The model dtype (default bf16 on a GPU, fp32 on the CPU); bf16 where the GPU lacks it is an error."""
    dt = resolve_dtype(dtype, device)
    if dt == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if dtype in (None, "auto"):  # the default only: an explicit bf16 request is refused below
            log.warning("%s has no bfloat16: computing in float16", torch.cuda.get_device_name(device))
            return torch.float16
        raise UserError(f"{torch.cuda.get_device_name(device)} does not support bfloat16: use --dtype float16 "
                        f"or --dtype float32")
    return dt


def load_model(name: str, dtype: str | torch.dtype | None = None, device: str | None = None,
               tokenizer=False):
    """Returns (model, tokenizer): ``AutoModelForCausalLM`` in eval mode, no grad. Pass an already
    loaded ``tokenizer`` (or ``None``) to skip loading it again. Run folders and polyprune archives
    are loaded by :func:`polyprune.loading.load_model` (``pp.load_model``). On CUDA the weights are
    placed by accelerate's ``device_map="auto"``: spread over the visible GPUs, with CPU offload when
    they do not fit (evaluation; pruning loads on the CPU and places layers itself, see polyprune.onload)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    path = resolve_model_path(name)
    dev = check_device(device)
    dt = check_dtype(dtype, dev)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise UserError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise UserError(f"model {name!r} ({getattr(config, 'model_type', type(config).__name__)}) is not a causal "
                        f"LM: give a decoder model that AutoModelForCausalLM can load")
    spread = dev.type == "cuda" and (device in (None, "auto", "cuda") or torch.cuda.device_count() == 1)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, **({"device_map": "auto"} if spread else {}))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    if not spread:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    tok = load_tokenizer(name) if tokenizer is False else tokenizer
    model.polyprune_source = name
    return model, tok


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the decoder blocks: its children are of a class listed in
    ``_no_split_modules`` (else: the longest ModuleList of same-class blocks)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    best: tuple[str, nn.ModuleList] | None = None
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        classes = {type(c).__name__ for c in mod}
        if len(classes) != 1:
            continue
        if names and classes & names:
            return path, mod
        if best is None or len(mod) > len(best[1]):
            if any(isinstance(c, nn.Linear) or is_conv1d(c) for c in mod[0].modules()):
                best = (path, mod)
    if best is None:
        raise UserError(f"no decoder layers found in {type(model).__name__}: expected a ModuleList of blocks")
    return best


def prunable_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear and GPT-2-style Conv1D inside one decoder layer, by relative name."""
    return {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)}


def prunable_weights(model: nn.Module) -> dict[str, nn.Module]:
    """Full parameter name of each prunable weight → its module."""
    path, layers = find_layers(model)
    out = {}
    for i, layer in enumerate(layers):
        for n, m in prunable_modules(layer).items():
            out[f"{path}.{i}.{n}.weight"] = m
    return out


def model_size_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total
