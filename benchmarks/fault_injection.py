"""The fault-injection sweep at more kill moments than the test suite: SIGKILL of ``prune``,
``export``, ``apply`` and a ``run`` grid at N seeded moments each, then a rerun that must give the
same bytes (tests/test_faults.py with ``POLYPRUNE_FAULT_SEEDS=N``).

    python benchmarks/fault_injection.py [--seeds 10]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from _common import ENV


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="kill moments per command (the suite uses 3, and 5 for the grid)")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, **ENV, "POLYPRUNE_FAULT_SEEDS": str(args.seeds)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", str(root / "tests" / "test_faults.py"),
           "-k", "sigkill", "--durations=0"]
    sys.exit(subprocess.call(cmd, env=env, cwd=root))


if __name__ == "__main__":
    main()
