"""GGUF (v2/v3) key/value metadata, read with ``struct`` (the tensors are left to transformers)."""
from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

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
