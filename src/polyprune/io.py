"""File-system plumbing every writer shares: contained names, atomic writes, exclusive ownership,
and OS errors turned into one line.

* ``check_name`` / ``child``: the one place that turns a user-supplied name (recipe, grid,
  evaluation or analysis name, cell label, language, output name) into a path. A name that
  could leave its folder is refused up front, naming the field.
* ``atomic_file`` / ``atomic_write`` / ``write_json``: a temp file beside the target, renamed over it; on any
  error the temp file is removed, so a full disk leaves nothing behind.
* ``owned``: an exclusive, non-blocking ``filelock`` lock on a folder being written. The lock is
  ``flock``-based, so the OS drops it when its process dies (a killed writer never blocks the
  next one); the owner's pid sits in a side file only for the error message.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

MAX_NAME = 120  # characters; file systems allow 255 bytes and we add prefixes and suffixes

# errors that are the user's environment (disk, permissions, paths), not a polyprune bug
USER_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
               errno.EDQUOT, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOENT, errno.EFBIG, errno.ELOOP}
_FIX = {errno.ENOSPC: "free disk space or choose another --out", errno.EDQUOT: "free disk space or choose another --out",
        errno.EFBIG: "choose another --out",
        errno.EACCES: "check the permissions or choose another --out",
        errno.EPERM: "check the permissions or choose another --out",
        errno.EROFS: "the file system is read-only: choose another --out",
        errno.ENOTDIR: "a parent of the path is a file, not a folder: choose another path",
        errno.EISDIR: "the path is a folder: give a file", errno.ENAMETOOLONG: "choose a shorter name",
        errno.ENOENT: "check the path", errno.EEXIST: "choose another path", errno.ELOOP: "check the path"}


def check_name(value: Any, field: str) -> str:
    """``value`` as a plain file-name component, or a UserError naming ``field``."""
    if not isinstance(value, str) or not value:
        raise UserError(f"{field}: {value!r} is not a name: give a non-empty plain name such as run-1")
    why = None
    if "\x00" in value:
        why = "contains a NUL character"
    elif "/" in value or "\\" in value or os.sep in value or (os.altsep and os.altsep in value):
        why = "contains a path separator"
    elif value in (".", "..") or value.strip(". ") == "":
        why = "is not a file name"
    elif len(value) > MAX_NAME:
        why = f"is {len(value)} characters long (at most {MAX_NAME})"
    if why:
        raise UserError(f"{field} {value!r} {why}: give a plain name (letters, digits, '-', '_', '.')")
    return value


def child(base: str | Path, name: Any, field: str, suffix: str = "") -> Path:
    """``base/<name><suffix>``, refusing a name that would leave ``base``."""
    return Path(base) / (check_name(name, field) + suffix)


def with_path(e: OSError, path: str | Path) -> OSError:
    """The same OS error, naming ``path`` when the OS did not (a failed ``write`` names nothing)."""
    if e.filename is None and e.errno is not None:
        new = type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path))
        return new
    return e


def save_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file``, whose I/O failures (a Rust error naming ``os error N``) become
    the OSError they are, naming ``path``."""
    import re
    from safetensors.torch import save_file
    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError as e:
        raise with_path(e, path) from None
    except Exception as e:  # noqa: BLE001  (SafetensorError is not an OSError)
        m = re.search(r"os error (\d+)", str(e))
        if not m:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def os_error_line(e: OSError) -> str:
    """One line for an OS error: what, where, and how to fix it."""
    code = e.errno
    cause = e.strerror or (os.strerror(code) if code else str(e))
    where = f" {e.filename}" if e.filename else ""
    if getattr(e, "filename2", None):
        where += f" → {e.filename2}"
    fix = _FIX.get(code, "check the path")
    verb = "write" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) else "access"
    return f"cannot {verb}{where}: {cause}; {fix}"


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp file beside ``path`` for the block to write (any writer that takes a file name); renamed
    over ``path`` when the block succeeds, removed when it fails. OS errors name ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        os.close(fd)
    except OSError as e:
        raise with_path(e, path.parent) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise with_path(e, path) from None
        raise


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    with atomic_file(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: str | Path, data: Any, default=str) -> None:
    """Atomic JSON write (indented, UTF-8, a trailing newline)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=default) + "\n"
    atomic_write(path, text)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: str | Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {size, sha256}}`` of every file under ``folder`` (sorted, ``skip`` left out)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in skip:
            out[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def manifest_mismatch(folder: str | Path, files: dict[str, dict]) -> str | None:
    """Why the files listed in ``files`` differ from the disk (missing, size, hash), or None."""
    folder = Path(folder)
    for rel, want in sorted(files.items()):
        p = folder / rel
        try:
            size = p.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != want.get("size"):
            return f"{rel} has {size} bytes, the manifest says {want.get('size')}"
        try:
            digest = sha256_file(p)
        except OSError as e:
            return f"{rel} is unreadable ({e.strerror})"
        if digest != want.get("sha256"):
            return f"{rel} does not match its sha256"
    return None


# ------------------------------------------------------------------------------------ ownership
class Busy(UserError):
    """Another live process holds the lock."""


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _pid_path(lock: Path) -> Path:
    return lock.with_name(lock.name + ".pid")


def _holder(lock: Path) -> str:
    try:
        return _pid_path(lock).read_text(encoding="utf-8").strip() or "?"
    except OSError:
        return "?"


def try_own(target: str | Path):
    """Take the lock of ``target`` without waiting: the lock object, or None when a live process holds it."""
    from filelock import FileLock, Timeout
    lock = lock_path(target)
    for _ in range(5):  # a finishing owner may unlink the lock file between our open and flock
        fl = FileLock(str(lock), timeout=0, thread_local=False)
        try:
            fl.acquire()
        except Timeout:
            return None
        except OSError as e:
            raise with_path(e, lock) from None
        try:
            same = os.path.samestat(os.stat(lock), os.fstat(fl._context.lock_file_fd))
        except (OSError, AttributeError, TypeError):
            same = lock.exists()
        if same:
            try:
                atomic_write(_pid_path(lock), f"{os.getpid()}\n")
            except BaseException:
                fl.release()
                raise
            return fl
        fl.release()
    return None


def release(fl, target: str | Path) -> None:
    """Release an ownership lock and remove its files (unlinked while still held)."""
    lock = lock_path(target)
    with contextlib.suppress(OSError):
        _pid_path(lock).unlink()
    with contextlib.suppress(OSError):
        lock.unlink()
    fl.release()


@contextlib.contextmanager
def owned(target: str | Path, what: str = "--out") -> Iterator[None]:
    """Hold ``target`` exclusively for the block; a second writer gets a UserError at once."""
    target = Path(target)
    fl = try_own(target)
    if fl is None:
        raise Busy(f"{target} is being written by another polyprune process (pid {_holder(lock_path(target))}); "
                   f"wait or choose another {what}")
    try:
        yield
    finally:
        release(fl, target)


def read_yaml(path: str | Path, fix: str, what: str = "valid YAML") -> Any:
    """``yaml.safe_load`` of a UTF-8 file; undecodable or malformed text is one line naming the
    place (line and column) and ``fix``."""
    import yaml
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not UTF-8 text (byte {e.start}): {fix}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        raise UserError(f"{p} is not {what}{at}{f' ({problem})' if problem else ''}: {fix}") from None
