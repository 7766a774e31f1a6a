"""Streaming one text field of a hub dataset (monolingual text and code sources share it)."""
from __future__ import annotations

from ..errors import UserError


def stream_field(dataset: str, config: str | None, split: str, field: str, *, seed: int | None = None,
                 max_docs: int | None = None, max_chars: int | None = None, field_option: str = "text_field",
                 hint: str = "give a local file") -> list[str]:
    """The ``field`` of the first records (shuffled with ``seed`` when given) until ``max_docs``
    records or ``max_chars`` characters; a missing field → ``UserError`` naming ``field_option``, other
    hub problems → ``UserError`` ending in ``hint``."""
    docs, total = [], 0
    try:
        from datasets import load_dataset
        ds = load_dataset(dataset, config, split=split, streaming=True)
        if seed is not None:
            ds = ds.shuffle(seed=seed, buffer_size=10_000)
        for rec in ds:
            docs.append(str(rec[field]))
            total += len(docs[-1])
            if (max_docs and len(docs) >= max_docs) or (max_chars and total >= max_chars):
                break
    except KeyError:
        raise UserError(f"dataset {dataset} has no field {field!r}: set option {field_option}") from None
    except Exception as e:
        raise UserError(f"could not stream {dataset} [{config}, {split}] from the hub ({type(e).__name__}): "
                        f"check the id/config or {hint}") from None
    return docs
