"""What the benchmark scripts share: data/cache folders, peak RSS, and one JSON-printing child per
configuration (a fresh process, so each configuration's peak RSS is its own)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("POLYPRUNE_CACHE", Path.home() / ".cache" / "polyprune"))
DATA = Path(os.environ.get("POLYPRUNE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
ENV = {"POLYPRUNE_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def peak_rss() -> int:
    """This process's peak RSS: VmHWM (per address space, reset by exec; ``ru_maxrss`` would carry the
    parent's peak over fork + exec), else ``ru_maxrss``. Standalone: peers' environments import it too."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(cmd: list[str], what: str, strict: bool = True, cwd: str | None = None) -> dict:
    """Run ``cmd`` (a benchmark child) and parse the JSON on its last stdout line. A failure exits
    with the child's stderr (``strict``) or returns ``{"error": last stderr line}``."""
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV}, cwd=cwd)
    if res.returncode:
        if strict:
            raise SystemExit(f"{what} failed:\n{res.stderr[-3000:]}")
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (cells already formatted as strings)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
