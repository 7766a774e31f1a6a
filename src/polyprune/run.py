"""Run folders: write atomically (temp dir + rename), read back for eval / analysis / apply.

Layout: ``config.yaml`` · ``masks.safetensors`` · ``weights.safetensors`` (kept values of
weight-updating methods, e.g. SparseGPT) · ``record.json`` · ``calibration.jsonl`` ·
``stats.safetensors`` (with keep_stats) · ``permutations.safetensors`` (input-channel order per
matrix under which an N:M mask holds, e.g. RIA's channel permutation) · ``model/`` (with save_model) · ``results/`` · ``figures/``.

One writer, :class:`RunWriter`, writes the folder of in-memory and streamed runs alike.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from . import io as _io
from .config import RunConfig, validate_config
from .errors import UserError
from .masks import MaskWriter, SparsityCounter, apply_masks, load_masks, save_masks

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("polyprune", "torch", "transformers", "safetensors", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (see ``polyprune.io.atomic_write``)."""
    _io.write_json(path, data, default=_json_default)


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


@contextmanager
def staged_dir(out: Path, force: bool = False):
    """Yield a temp folder beside ``out``; on success it replaces ``out``, on error it is removed.

    ``out`` is owned exclusively meanwhile: a second writer of the same folder is refused at once,
    and leftovers of a killed earlier writer (its temp folders) are removed."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create {out.parent} ({e.strerror}): choose another --out") from None
    with _io.owned(out):
        if out.exists() and not force:
            raise UserError(f"output folder {out} already exists: choose another --out or pass --force")
        remove_leftovers(out)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=str(out.parent)))
        except OSError as e:
            raise UserError(f"--out {out}: cannot write in {out.parent} ({e.strerror}): choose another --out") from None
        try:
            yield tmp
            swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def remove_leftovers(folder: Path) -> None:
    """Remove temp and swapped-out folders of an interrupted writer of ``folder`` (call it as the owner)."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return
    for p in folder.parent.glob(f".{glob.escape(folder.name)}.*"):
        if p.is_dir() and (p.name.startswith(f".{folder.name}.tmp-") or p.name.startswith(f".{folder.name}.old-")):
            shutil.rmtree(p, ignore_errors=True)


def swap_in(tmp: Path, folder: Path) -> None:
    """Make the finished folder ``tmp`` the content of ``folder`` by renames (replacing an old one)."""
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def mask_metadata_of(cfg: RunConfig) -> dict[str, str]:
    """What a masks file records about its run (the same for in-memory and streamed runs)."""
    return {"method": cfg.method, "model": cfg.model, "pattern": cfg.pattern, "sparsity": str(cfg.sparsity)}


def base_hash(folder: str | Path) -> str | None:
    """``sha256:<hex>`` of the base checkpoint's tensors (name, dtype, shape and bytes of each, in
    name order), so a run rebuilt from base + masks can tell that its base changed; the file layout
    (sharding, header order, metadata) does not enter it. ``None`` without local safetensors."""
    import hashlib
    from .tensorfile import Checkpoint
    try:
        ckpt = Checkpoint(folder)
    except UserError:
        return None
    files = sorted({e[0] for e in ckpt.entries.values()})
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASHES:  # one read per unchanged checkpoint and process (grids prune one base many times)
        h = hashlib.sha256()
        handles = {f: open(f, "rb") for f in files}
        try:
            for name in sorted(ckpt.entries):
                path, code, shape, start, end = ckpt.entries[name]
                h.update(json.dumps([name, code, list(shape)]).encode())
                fh = handles[path]
                fh.seek(start)
                left = end - start
                while left:
                    chunk = fh.read(min(16 << 20, left))
                    h.update(chunk)
                    left -= len(chunk)
        finally:
            for fh in handles.values():
                fh.close()
        _HASHES[key] = "sha256:" + h.hexdigest()
    return _HASHES[key]


_HASHES: dict[tuple, str] = {}


def base_folder(model: str) -> Path | None:
    """The local folder holding the base checkpoint of ``model`` (None when it is not local)."""
    from .model import resolve_model_path
    p = Path(resolve_model_path(model))
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 — not in the local cache: nothing to hash
        return None


def config_data(cfg: RunConfig, folder: str | Path | None = None) -> dict:
    """config.yaml's content: the run config, the base checkpoint's hash, library versions."""
    data = cfg.model_dump(mode="json")
    if data.get("base_hash") is None:
        src = Path(folder) if folder is not None else base_folder(cfg.model)
        data["base_hash"] = base_hash(src) if src is not None else None
    data["versions"] = versions()
    return data


def check_base(cfg: RunConfig, run: Path, folder: str | Path | None = None) -> None:
    """A run rebuilt from its base model must find the base it was pruned from."""
    if not cfg.base_hash:
        log.warning("%s records no base model hash (an older run): cannot check that %s is the model it was "
                    "pruned from", run, cfg.model)
        return
    src = Path(folder) if folder is not None else base_folder(cfg.model)
    now = base_hash(src) if src is not None else None
    if now is None:
        log.warning("base model %s has no local safetensors to check against the run's hash", cfg.model)
    elif now != cfg.base_hash:
        raise UserError(f"base model {cfg.model} has hash {now} but {run} was pruned from {cfg.base_hash}: "
                        f"give the original base model (or re-prune)")


KEPT_FORMAT = "polyprune-kept-values"
PERMUTATIONS_FORMAT = "polyprune-input-permutations"


def _save_permutations(folder: Path, perms: dict[str, torch.Tensor]) -> None:
    """mask[:, perm] is N:M; apply x[..., perm] with W[:, perm] at inference."""
    _io.save_safetensors({k: v.to(torch.long).contiguous() for k, v in sorted(perms.items())},
                         folder / "permutations.safetensors", metadata={"format": PERMUTATIONS_FORMAT})


class StreamSink:
    """The streaming sink of :class:`RunWriter`: each matrix's mask, kept values and method info go to
    their files as the engine hands them over (``masks.MaskWriter``, ``tensorfile.SafetensorsWriter``),
    so no run-sized dict is held; only the permutations (one index vector per matrix) wait for
    :meth:`close`. Counts what it wrote, for the record."""

    def __init__(self, folder: str | Path, mask_metadata: dict[str, str]):
        from .tensorfile import INFO_FORMAT, SafetensorsWriter
        self.folder = Path(folder)
        self.masks = MaskWriter(self.folder / "masks.safetensors", mask_metadata)
        self.kept = SafetensorsWriter(self.folder / "weights.safetensors", {"format": KEPT_FORMAT})
        self.info = SafetensorsWriter(self.folder / "info.safetensors", {"format": INFO_FORMAT})
        self.info_scalars: dict[str, dict] = {}
        self.permutations: dict[str, torch.Tensor] = {}
        self.counter = SparsityCounter()
        self.closed = False

    def add(self, name: str, mask: torch.Tensor, weight: torch.Tensor | None = None, info: dict | None = None) -> None:
        from .tensorfile import info_items
        self.masks.add(name, mask)
        self.counter.add(name, mask)
        if weight is not None:  # only the kept values: W[mask] in row-major order, in the model's dtype
            self.kept.add(name, weight[mask].contiguous())
        if info:
            ts, sc = info_items(name, info)
            for key, t in ts.items():
                self.info.add(key, t)
            self.info_scalars[name] = sc
            if "permutation" in info:
                self.permutations[name] = torch.as_tensor(info["permutation"], dtype=torch.long)

    def report(self) -> dict:
        return self.counter.report()

    def close(self) -> None:
        """Finish the files; a file nothing was added to is not written."""
        if self.closed:
            return
        self.closed = True
        self.masks.close()
        for w in (self.kept, self.info):
            if w.header:
                if w is self.info:
                    w.metadata["scalars"] = json.dumps(dict(sorted(self.info_scalars.items())))
                w.close(sort=True)  # in name order: the in-memory run's files, byte for byte
            else:
                w.abort()
        if self.permutations:
            _save_permutations(self.folder, self.permutations)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            for w in (self.masks, self.kept, self.info):
                w.abort()


class RunWriter:
    """The one writer of a run folder (normally a staged temp folder), for in-memory and streamed
    runs: ``config.yaml``, the tensor files, ``calibration.jsonl``, the saved model / tokenizer and
    ``record.json``. In memory (default) the tensor files are written from the engine's
    :class:`~polyprune.result.PruneResult` at :meth:`finish`; with ``stream=True`` the engine feeds
    :attr:`sink` (a :class:`StreamSink`) matrix by matrix and :meth:`finish` closes it. ``source``:
    the base checkpoint's folder, for its hash (default: found from the config's model)."""

    def __init__(self, folder: str | Path, cfg: RunConfig, stream: bool = False, source: str | Path | None = None):
        self.folder, self.cfg, self.source = Path(folder), cfg, source
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sink = StreamSink(self.folder, mask_metadata_of(cfg)) if stream else None

    def _write_tensors(self, result) -> None:
        folder, save_file = self.folder, _io.save_safetensors
        save_masks(result.masks, folder / "masks.safetensors", mask_metadata_of(self.cfg))
        if result.weights:  # only the kept values: W[mask] in row-major order, in the model's dtype
            save_file({k: v[result.masks[k]].contiguous() for k, v in sorted(result.weights.items())},
                      folder / "weights.safetensors", metadata={"format": KEPT_FORMAT})
        if result.permutations:
            _save_permutations(folder, result.permutations)
        info = {k: v for k, v in result.info.items() if k in result.masks}
        if info:  # per-matrix method info with tensors (e.g. GPTQ scales / zero points) for exporters
            from .tensorfile import save_method_info
            save_method_info(info, folder / "info.safetensors")
        if result.stats:
            flat = {f"{p}::{s}::{k}": t.contiguous() for p, per in result.stats.items() for s, d in per.items()
                    for k, t in d.items()}
            save_file(flat, folder / "stats.safetensors")

    def finish(self, result, calibration=None, tokenizer=None, model=None) -> None:
        """Write everything but what the sink already wrote; ``record.json`` last."""
        folder, cfg = self.folder, self.cfg
        data = config_data(cfg, self.source)
        (folder / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        if self.sink is None:
            self._write_tensors(result)
        else:
            self.sink.close()
        if calibration is not None:
            calibration.write_jsonl(folder / "calibration.jsonl", tokenizer)
        record = dict(result.record)
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        if model is not None and cfg.save_model:
            model.save_pretrained(folder / "model")
        if tokenizer is not None and (folder / "model").is_dir():  # beside a saved or streamed model
            tokenizer.save_pretrained(folder / "model")
        write_json(folder / "record.json", record)

    def abort(self) -> None:
        if self.sink is not None:
            self.sink.abort()


def write_run(folder: Path, cfg: RunConfig, result, calibration=None, tokenizer=None, model=None) -> None:
    """Write an in-memory run's folder from the engine's result (see :class:`RunWriter`)."""
    RunWriter(folder, cfg).finish(result, calibration, tokenizer, model)


def is_run(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "masks.safetensors").is_file()


def read_config(path: str | Path) -> RunConfig:
    p = Path(path)
    f = p / "config.yaml"
    from .io import read_yaml
    data = read_yaml(f, "restore it or re-run the prune") or {}
    if not isinstance(data, dict):
        raise UserError(f"{f} is not a run configuration (a mapping): restore it or re-run the prune")
    data.pop("versions", None)
    # fields only: the run exists, so a cross-field rule added since it was written must not lock it out
    return validate_config(data, f"{p}/config.yaml", partial=True)


def load_kept_weights(path: Path) -> dict[str, torch.Tensor]:
    """The kept values of a weight-updating method (empty when the run has none); a damaged file is
    a one-line error, never a traceback."""
    from safetensors.torch import load_file
    f = Path(path) / "weights.safetensors"
    if not f.is_file():
        return {}
    try:
        return load_file(str(f))
    except Exception as e:  # noqa: BLE001  (SafetensorError: truncated or not safetensors)
        raise UserError(f"{f} is damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                        f"re-run the prune") from None


def apply_run(model, path: str | Path) -> None:
    """Apply a run's masks (and the updated kept values of weight-updating methods) to ``model``;
    masks or kept values that do not fit the model are a UserError (nothing half-applied is returned)."""
    masks = load_masks(path)
    kept = load_kept_weights(Path(path))
    for name, values in kept.items():
        if name not in masks or values.numel() != int(masks[name].sum()):
            raise UserError(f"{path}/weights.safetensors: kept values of {name} do not match its mask "
                            f"({values.numel()} values for {int(masks[name].sum()) if name in masks else 0} kept "
                            f"weights): the run folder is damaged; re-run the prune")
    apply_masks(model, masks)
    if kept:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, values in kept.items():
                p = params.get(name)
                m = masks[name].to(p.device) if p is not None and name in masks else None
                if m is None or values.numel() != int(m.sum()):
                    raise UserError(f"{Path(path) / 'weights.safetensors'}: {name} does not fit the masks or the "
                                    f"model: re-run the prune")
                p.data[m] = values.to(device=p.device, dtype=p.dtype)


def load_run_or_model(target: str, dtype: str | None = None, device: str | None = None):
    """``(model, tokenizer, run_dir or None)``: a run folder (base model + masks) or any model."""
    from .model import load_model
    p = Path(target)
    if p.is_dir() and is_run(p):
        cfg = read_config(p)
        if (p / "model").is_dir():
            model, tok = load_model(str(p / "model"), dtype or cfg.dtype, device or cfg.device)
        else:
            check_base(cfg, p)
            model, tok = load_model(cfg.model, dtype or cfg.dtype, device or cfg.device)
            apply_run(model, p)
        return model, tok, p
    if p.is_dir() and (p / "config.yaml").is_file() and not (p / "masks.safetensors").exists():
        raise UserError(f"{p} looks like an unfinished run (no masks.safetensors): re-run it")
    model, tok = load_model(target, dtype, device)
    return model, tok, None
