"""Safetensors files, read and written tensor by tensor: the I/O layer under run folders,
streaming and export.

:class:`Checkpoint` indexes a local checkpoint by its headers and reads tensors through
``safetensors.safe_open``; row-wise reads of an embedding and the tensor-by-tensor
:class:`SafetensorsWriter` stay hand-written, because the library measured slower or needed more
memory there (numbers in the class docstrings, from ``benchmarks/tensorfile_io.py``). Method info
(e.g. GPTQ scales) is stored here too, so the run folder, streaming and export share one format.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .errors import UserError

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
CHUNK = 16 << 20
WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth|gguf|ckpt|h5|msgpack)$|.*\.safetensors\.index\.json$")

INFO_FORMAT = "polyprune-method-info"


class Checkpoint:
    """Index of a local safetensors checkpoint (one file, or shards + ``model.safetensors.index.json``):
    ``name -> (file, dtype, shape, absolute byte range)``, from the headers only.

    The byte ranges are what ``safe_open`` does not expose: raw copies (:meth:`copy_bytes`), row
    reads (:meth:`lazy_rows`) and hashing of a base use them. Whole tensors are read by ``safe_open``
    (:meth:`load`). Measured on a 1.07 GB file (32 × 4096², fp16/bf16, warm page cache,
    ``benchmarks/tensorfile_io.py``, one run, load average 8 on 2 cores; hand-written ÷ library):
    reading every tensor once, time 6.7, peak RSS 1.9 (the hand-written reader copied into a private
    buffer: 3.46 s, 68 MB above imports; one ``safe_open`` per tensor: 0.52 s, 37 MB; one handle kept
    open for the whole file: 0.48 s but 1029 MB, as every page it touched stays mapped, hence one
    handle per call). Row-by-row reads of 2,000 rows of one matrix: time 0.82, peak RSS 0.68
    (``get_slice`` rows fault in whole pages around each row), so :meth:`lazy_rows` keeps
    ``os.pread``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise UserError(f"{self.folder} has no safetensors checkpoint: streaming needs model.safetensors "
                            f"(or shards with an index); re-save the model with save_pretrained")
        self.entries: dict[str, tuple[Path, str, tuple[int, ...], int, int]] = {}
        for fname in files:
            path = self.folder / fname
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            base = 8 + n
            for name, e in header.items():
                if name == "__metadata__":
                    continue
                start, end = e["data_offsets"]
                self.entries[name] = (path, e["dtype"], tuple(e["shape"]), base + start, base + end)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def keys(self) -> list[str]:
        return list(self.entries)

    def dtype(self, name: str) -> torch.dtype:
        code = self.entries[name][1]
        if code not in ST_DTYPES:
            raise UserError(f"tensor {name} has dtype {code}, which streaming does not handle: convert the checkpoint")
        return ST_DTYPES[code]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][2]

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        return sum(self.entries[n][4] - self.entries[n][3] for n in (names if names is not None else self.entries))

    def lazy_rows(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, Any]:
        """A [rows, …] tensor in ``dtype`` whose rows are read from disk on first use, and the forward
        pre-hook for the nn.Embedding holding it: an embedding lookup pages in only the rows its ids
        touch (untouched rows are never-written zero pages, not resident)."""
        path, _, shape, start, _ = self.entries[name]
        src_dt = self.dtype(name)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        region = mmap.mmap(-1, max(nbytes, 1))  # anonymous, zero-filled, resident only where written
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            region.madvise(mmap.MADV_NOHUGEPAGE)  # one written row must not fault in a 2 MiB page
        out = torch.frombuffer(region, dtype=torch.uint8, count=nbytes).view(dtype).reshape(shape)
        row_bytes = int(np.prod(shape[1:])) * src_dt.itemsize
        loaded = torch.zeros(shape[0], dtype=torch.bool)

        def hook(module, args):
            ids = torch.unique(args[0]).cpu()
            need = ids[~loaded[ids]].tolist()
            if need:
                with open(path, "rb") as f:
                    fd = f.fileno()
                    for r in need:
                        raw = bytearray(os.pread(fd, row_bytes, start + r * row_bytes))
                        out[r] = torch.frombuffer(raw, dtype=src_dt).reshape(shape[1:]).to(dtype)
                loaded[need] = True
        return out, hook

    def load(self, name: str) -> torch.Tensor:
        """The tensor, by ``safe_open(...).get_tensor``: a copy-on-write mapping of its file (changes
        stay private; only its pages become resident, and the mapping goes with the tensor). One
        ``safe_open`` per call, so that a long stream never keeps a whole file mapped."""
        from safetensors import safe_open
        self.dtype(name)  # a dtype streaming does not handle is a UserError
        with safe_open(str(self.entries[name][0]), framework="pt") as f:
            return f.get_tensor(name)

    def copy_bytes(self, name: str, out) -> None:
        """Copy the tensor's raw bytes into the open file ``out`` in chunks (no memory map)."""
        path, _, _, start, end = self.entries[name]
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start
            while left:
                chunk = f.read(min(CHUNK, left))
                out.write(chunk)
                left -= len(chunk)


# ---------------------------------------------------------------------------------------------
# writing safetensors tensor by tensor

def _raw(t: torch.Tensor) -> memoryview:
    """A tensor's bytes without a copy (contiguous CPU tensors; bf16 goes through a uint8 view)."""
    return memoryview(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())


def _header_entry(dtype: torch.dtype, shape, offset: int, nbytes: int) -> dict[str, Any]:
    return {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}


def _header_blob(header: dict[str, Any], metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length + JSON header of a safetensors file (padded to 8 bytes), laid out as
    ``safetensors.torch.save_file`` lays it out (metadata first, then the tensors by name), so a
    file of one dtype written here equals the library's byte for byte."""
    header = {**({"__metadata__": metadata} if metadata else {}), **dict(sorted(header.items()))}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 dtypes: dict[str, torch.dtype] | None = None) -> int:
    """Like ``safetensors.torch.save_file``: the header first, then each tensor's bytes straight from
    its storage. ``dtypes``: store these tensors in another dtype, each converted just before it is
    written, where ``save_file`` would need every converted copy at once. Returns the data bytes.

    ``save_file`` 0.8 no longer assembles the file in memory either: for 1.07 GB already in memory
    (``benchmarks/tensorfile_io.py``, shard modes, one run, load average 8 on 2 cores) extra peak RSS
    1.6 MB vs 0.3 MB, time 3.1 s vs 9.7 s (an earlier run: 7.7 s vs 8.0 s; under this load the times
    are noise, the memory is not). What keeps this function is the one-at-a-time ``dtypes``
    conversion."""
    dtypes = {k: dtypes.get(k, t.dtype) if dtypes else t.dtype for k, t in tensors.items()}
    header, offset = {}, 0
    for name, t in tensors.items():
        n = t.numel() * dtypes[name].itemsize
        header[name] = _header_entry(dtypes[name], t.shape, offset, n)
        offset += n
    with open(path, "wb") as f:
        f.write(_header_blob(header, metadata))
        for name, t in tensors.items():
            f.write(_raw(t.to(dtypes[name])))
    return offset


class SafetensorsWriter:
    """Write one safetensors file tensor by tensor: data go to a side file as they come, the
    header and data are joined on :meth:`close`; nothing is kept in memory.

    Not ``safetensors.torch.save_file``: it needs every tensor of the file at once, while streamed
    runs and exports produce them one matrix at a time. Measured for a 1.07 GB file (32 × 4096²,
    fp16/bf16, each made just before it is written; ``benchmarks/tensorfile_io.py``, one run, load
    average 8 on 2 cores; hand-written ÷ library): peak RSS 0.09 (100 MB vs 1091 MB above imports),
    time 1.12 (24.8 s vs 22.0 s: the side file is copied once more on close)."""

    def __init__(self, path: str | Path, metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.metadata = dict(metadata or {})
        self.data_path = self.path.with_name(f".{self.path.name}.data")
        self.data = open(self.data_path, "wb")
        self.header: dict[str, Any] = {}
        self.offset = 0

    def _entry(self, name: str, dtype: torch.dtype, shape, nbytes: int) -> None:
        if name in self.header:
            raise ValueError(f"duplicate tensor {name}")
        self.header[name] = _header_entry(dtype, shape, self.offset, nbytes)
        self.offset += nbytes

    def add(self, name: str, tensor: torch.Tensor) -> None:
        raw = _raw(tensor)
        self._entry(name, tensor.dtype, tensor.shape, raw.nbytes)  # a duplicate is refused before any byte
        self.data.write(raw)

    def add_from(self, name: str, ckpt: Checkpoint, source_name: str | None = None) -> None:
        """Copy a tensor's bytes straight from a checkpoint."""
        src = source_name or name
        self._entry(name, ckpt.dtype(src), ckpt.shape(src), ckpt.nbytes([src]))
        ckpt.copy_bytes(src, self.data)

    @property
    def nbytes(self) -> int:
        return self.offset

    def close(self, sort: bool = False) -> None:
        """Join header and data. ``sort``: lay the data out in name order (as a writer given a sorted
        dict would), copied piece by piece from the side file."""
        self.data.close()
        header, spans = self.header, None
        if sort:
            header, spans, offset = {}, [], 0
            for name in sorted(self.header):
                start, end = self.header[name]["data_offsets"]
                header[name] = {**self.header[name], "data_offsets": [offset, offset + end - start]}
                spans.append((start, end - start))
                offset += end - start
        with open(self.path, "wb") as out, open(self.data_path, "rb") as data:
            out.write(_header_blob(header, self.metadata))
            if spans is None:
                shutil.copyfileobj(data, out, CHUNK)
            for start, left in spans or ():
                data.seek(start)
                while left:
                    chunk = data.read(min(CHUNK, left))
                    out.write(chunk)
                    left -= len(chunk)
        self.data_path.unlink()

    def abort(self) -> None:
        self.data.close()
        self.data_path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# the meta skeleton


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
    w.close(sort=True)  # by name, as the streamed run's file


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
