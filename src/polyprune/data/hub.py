"""The Hugging Face hub as a data source: a fast reachability check, and streaming one text field
of a hub dataset (monolingual text and code sources share it)."""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from ..errors import UserError

CONNECT_TIMEOUT_S = 3.0  # the whole check, DNS included, stays under this
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_reachable: dict[str, bool] = {}


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def offline_var() -> str | None:
    """The environment variable that puts the hub offline, if one is set."""
    return next((v for v in _OFFLINE_VARS if _truthy(os.environ.get(v))), None)


def hub_reachable(endpoint: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (name lookup included,
    in a daemon thread, since lookups ignore socket timeouts); cached per process."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True  # behind a proxy a direct connection proves nothing: leave it to the hub client
    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    key = f"{host}:{port}"
    if key not in _reachable:
        ok: list[bool] = []

        def probe() -> None:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                ok.append(True)
            except OSError:
                pass
        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(timeout)
        _reachable[key] = bool(ok)
    return _reachable[key]


def require_hub(what: str, hint: str) -> None:
    """Stop with one line, at once, when ``what`` would come from the hub but the hub is offline or
    unreachable (instead of a minute of retries); ``hint`` says how to give the data locally."""
    var = offline_var()
    if var:
        raise UserError(f"{what} comes from the Hugging Face hub, but {var}=1 (offline): {hint}")
    if not hub_reachable():
        raise UserError(f"{what} comes from the Hugging Face hub, which is unreachable from this machine: {hint}")


def stream_field(dataset: str, config: str | None, split: str, field: str, *, seed: int | None = None,
                 max_docs: int | None = None, max_chars: int | None = None, field_option: str = "text_field",
                 hint: str = "give a local file") -> list[str]:
    """The ``field`` of the first records (shuffled with ``seed`` when given) until ``max_docs``
    records or ``max_chars`` characters; a missing field → ``UserError`` naming ``field_option``, other
    hub problems → ``UserError`` ending in ``hint``."""
    require_hub(f"dataset {dataset}", hint)
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
