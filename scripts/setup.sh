#!/usr/bin/env bash
# Idempotent set-up on a fresh (offline) machine: CPU torch first when absent, then the project.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && command -v polyprune >/dev/null 2>&1 \
   && "$PY" -c "import pathlib, sys, polyprune, torch; sys.exit(not pathlib.Path(polyprune.__file__).resolve().is_relative_to(pathlib.Path('src').resolve()))" 2>/dev/null; then
  # installed, importable, and from this checkout (an editable install of another clone does not count)
  exit 0
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  # an unpinned torch would pull a multi-GB CUDA build; the pinned CPU wheel is on local disk
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
# keep the installed torch: later requirements must not replace it with another build
tv=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
echo "torch==$tv" > .torch-constraint.txt
"$PY" -m pip install --quiet -c .torch-constraint.txt -e ".[dev]"
echo "$want" > "$stamp"
