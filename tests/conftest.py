import os
from pathlib import Path

import pytest
import torch

# the suite checks exact one-line errors: progress is off unless a test turns it on (make exports nothing here)
os.environ["POLYPRUNE_PROGRESS"] = "0"
# every test runs offline; set before any library reads them (tests/forked.py's server imports them once)
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real offline data (FLORES-200, XNLI, MARC) beside the project."""
    d = Path(os.environ.get("POLYPRUNE_DATA_DIR", SHARED_DATA))
    if not (d / "flores200").is_dir():
        pytest.skip(f"no offline data at {d}")
    return d


@pytest.fixture(scope="session")
def tokenizer():
    from polyprune.testing import tiny_tokenizer
    return tiny_tokenizer()


@pytest.fixture
def tiny():
    """Factory: tiny(family, seed=0) → a fresh tiny random model."""
    from polyprune.testing import tiny_model
    return tiny_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory: a saved tiny llama (or another family) folder with tokenizer, for CLI tests."""
    from polyprune.testing import save_tiny
    cache = {}

    def make(family: str = "llama") -> Path:
        if family not in cache:
            cache[family] = save_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return cache[family]
    return make


@pytest.fixture
def calib_ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(5, 384, (4, 24), generator=g)


@pytest.fixture
def cli(capsys):
    """``polyprune.cli.main`` in-process: (returncode, stdout, stderr) like a subprocess."""
    import subprocess
    from polyprune.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run


# the longest files first, so that `-n 2 --dist loadfile` hands them out early and the short ones fill
# the end: both workers then finish within a second of each other (total test time ~250 s here; these
# files take 10-40 s each, the rest < 10 s). xdist would otherwise order files by their number of tests.
LONGEST_FIRST = ("test_grid.py", "test_faults.py", "test_device.py", "test_embedded.py", "test_readme.py",
                 "test_gpu_engine.py", "test_eval_models.py", "test_export.py", "test_engine.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
