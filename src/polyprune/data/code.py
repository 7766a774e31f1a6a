"""Python source code, for code calibration and contrast sets (Kim et al. use Python as ``Z``).

Default (offline): the ``.py`` files of the running interpreter's standard library, sorted by
relative path, skipping test suites (``test``/``tests``/``idle_test`` folders, which include
deliberately broken files) and installed packages. Or a local folder (``code_dir``), or a hub
dataset (``code_dataset`` with ``code_field``, streamed, first ``max_files`` documents).
"""
from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .hub import stream_field

SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
DEFAULT_MAX_FILES = 2000


@dataclass
class CodeCorpus:
    """Document ids in a fixed order and a reader for each; ``source`` describes the corpus."""

    ids: list[str]
    read: Callable[[str], str]
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_files(root: str | Path) -> list[str]:
    """Relative paths of the ``.py`` files under ``root`` (sorted, ``SKIP_DIRS`` not entered)."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(out)


def _reader(root: Path) -> Callable[[str], str]:
    def read(rel: str) -> str:
        try:
            return (root / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return ""
    return read


def load_code(code_dir: str | Path | None = None, code_dataset: str | None = None, code_config: str | None = None,
              code_split: str = "train", code_field: str = "content", max_files: int = DEFAULT_MAX_FILES) -> CodeCorpus:
    """A corpus of Python source files; empty → ``UserError``."""
    import sys
    if code_dataset:
        docs = stream_field(code_dataset, code_config, code_split, code_field, max_docs=max_files, field_option="code_field",
                            hint="give option code_dir for a local folder of .py files")
        corpus = CodeCorpus([str(i) for i in range(len(docs))], lambda i: docs[int(i)],
                            {"dataset": code_dataset, "config": code_config, "split": code_split})
        what = f"dataset {code_dataset}"
    else:
        root = Path(code_dir) if code_dir else stdlib_dir()
        if not root.is_dir():
            raise UserError(f"code folder {root} not found: give option code_dir=FOLDER with .py files")
        ids = python_files(root)
        src = {"dataset": "python-stdlib", "python": sys.version.split()[0]} if not code_dir else \
            {"dataset": "folder", "folder": str(root)}
        corpus = CodeCorpus(ids, _reader(root), src)
        what = f"folder {root}"
    if not corpus.ids:
        raise UserError(f"the code corpus is empty ({what} has no Python files): give option code_dir=FOLDER "
                        f"with .py files")
    return corpus


__all__ = ["CodeCorpus", "SKIP_DIRS", "load_code", "python_files", "stdlib_dir"]
