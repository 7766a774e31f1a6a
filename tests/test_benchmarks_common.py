"""The benchmark scripts' shared child runner: JSON from the last stdout line, failures reported."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import markdown_table, peak_rss, run_child  # noqa: E402


def test_child_json_and_failures():
    ok = run_child([sys.executable, "-c", "print('noise'); print('{\"seconds\": 1.5}')"], "ok")
    assert ok == {"seconds": 1.5}
    bad = [sys.executable, "-c", "import sys; sys.exit('no model here')"]
    assert run_child(bad, "bad", strict=False) == {"error": "no model here"}
    with pytest.raises(SystemExit, match="bad failed:\nno model here"):
        run_child(bad, "bad")
    assert peak_rss() > 10 * 2**20


def test_markdown_table():
    assert markdown_table(["a", "b"], [["1", 2], ["x", ""]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n| x |  |"
