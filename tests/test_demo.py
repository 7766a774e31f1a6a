"""`polyprune demo`: data-folder discovery, the grid it runs, and an end-to-end run on a tiny model."""
from pathlib import Path

import pytest

from polyprune.demo import DEMO_EVAL_LINES, DEMO_LANGS, demo_grid, find_data_dir, run_demo
from polyprune.errors import UserError
from polyprune.grid import grid_from_dict


def test_find_data_dir(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no offline data found.*--data-dir"):
        find_data_dir(tmp_path)
    (tmp_path / "flores200").mkdir()
    assert find_data_dir(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("POLYPRUNE_DATA_DIR", str(tmp_path))
    assert find_data_dir() == tmp_path.resolve()
    monkeypatch.setenv("POLYPRUNE_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="nope"):
        find_data_dir()
    monkeypatch.delenv("POLYPRUNE_DATA_DIR")
    work = tmp_path / "a" / "repo"
    work.mkdir(parents=True)
    (tmp_path / "a" / "shared" / "data" / "flores200").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert find_data_dir() == (tmp_path / "a" / "shared" / "data").resolve()


def test_demo_grid_cells():
    g = grid_from_dict(demo_grid(), where="demo")
    labels = [(c.labels["method"], c.labels["calibration"]) for c in g.cells]
    assert labels == [("dense", "-"), ("magnitude", "-"), ("wanda", "eng"), ("wanda", "fra"), ("wanda", "zho"),
                      ("wanda", "swh")]
    w = g.cells[-1]
    assert w.config["calibration"]["recipe"] == "text" and w.config["calibration"]["langs"] == ["swh_Latn"]
    assert w.config["sparsity"] == 0.5
    assert all(c.evaluations == [{"name": "perplexity", "task": "perplexity", "langs": list(DEMO_LANGS),
                                  "limit": DEMO_EVAL_LINES, "options": {}, "cells": "all"}] for c in g.cells)


def test_demo_end_to_end_on_a_tiny_model(tmp_path, tiny_dir, data_dir):
    out = tmp_path / "demo-runs"
    rep = run_demo(out, data_dir, model=str(tiny_dir("llama")), nsamples=2, seqlen=32, limit=3, show=False)
    s = rep["summary"]
    assert (s.done, s.skipped, s.failed) == (6, 0, [])
    t = rep["table"]
    assert t.langs == list(DEMO_LANGS) and t.metric == "ppl" and not t.higher_is_better
    assert [r.labels["calibration"] for r in t.rows] == ["-", "-", "eng", "fra", "zho", "swh"]
    dense = t.rows[0]
    assert dense.is_baseline and all(v > 1 for v in dense.values.values())
    assert {p.name for p in rep["figures"]} >= {f"perplexity-{Path(str(tiny_dir('llama'))).name}-heatmap.png"}
    assert (out / "report" / "perplexity.md").is_file()
    again = run_demo(out, data_dir, model=str(tiny_dir("llama")), nsamples=2, seqlen=32, limit=3, show=False,
                     figures=False)
    assert (again["summary"].done, again["summary"].skipped) == (0, 6)
