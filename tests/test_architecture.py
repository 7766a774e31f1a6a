"""The package's layers (pyproject.toml, [tool.importlinter]): every module imports only from the
layers below it, so there are no import cycles and no upward imports."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)


def test_import_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "KEPT" in r.stdout and "BROKEN" not in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package where the run folder imports the grid."""
    import shutil
    shutil.copytree(ROOT / "src", tmp_path / "src")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    run = tmp_path / "src" / "polyprune" / "run.py"
    run.write_text(run.read_text() + "\n\ndef _upward():\n    from .grid import load_grid\n    return load_grid\n")
    r = _lint(tmp_path)
    assert r.returncode != 0 and "polyprune.run is not allowed to import polyprune.grid" in r.stdout
