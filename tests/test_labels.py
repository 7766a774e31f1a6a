"""One label scheme: a run is named the same by its grid cell, its report row and the analyses."""
import json
from pathlib import Path

import pytest

from polyprune.config import validate_config
from polyprune.grid import grid_from_dict, load_grid
from polyprune.labels import calibration_label, dense_labels, run_labels

# the cell folders of recipes/kurz2025-small.yaml (hash version 1), written out by hand: a change
# here renames the folders of every finished run of that grid
KURZ2025_SMALL = [
    "embedded-dense-29c021149f",
    "embedded-wanda-0.5-ar-s0-5139f92906",
    "embedded-wanda-0.5-de-s0-af999604ae",
    "embedded-wanda-0.5-en-s0-f07a44a6d2",
    "embedded-wanda-0.5-es-s0-61ab55bf53",
    "embedded-wanda-0.5-ru-s0-0618443bb5",
    "embedded-wanda-0.5-sw-s0-ff2ef73402",
    "embedded-wanda-0.5-zh-s0-7c09b324e9",
    "embedded-wanda-0.5-all7-s0-5bc4cc8957",
    "embedded-sparsegpt-0.5-ar-s0-da7655585c",
    "embedded-sparsegpt-0.5-de-s0-1e8951cd3d",
    "embedded-sparsegpt-0.5-en-s0-29707923fc",
    "embedded-sparsegpt-0.5-es-s0-f506326746",
    "embedded-sparsegpt-0.5-ru-s0-2bf5496e97",
    "embedded-sparsegpt-0.5-sw-s0-a50d704264",
    "embedded-sparsegpt-0.5-zh-s0-896914ed20",
    "embedded-sparsegpt-0.5-all7-s0-17213e143a",
]


def test_kurz2025_small_keeps_its_cell_folders():
    g = load_grid(Path(__file__).resolve().parents[1] / "recipes" / "kurz2025-small.yaml")
    assert [c.dirname for c in g.cells] == KURZ2025_SMALL


def test_labels_of_a_config_and_of_its_mapping():
    cfg = validate_config({"model": "google/gemma-3-270m", "method": "sparsegpt", "pattern": "2:4", "seed": 3,
                           "calibration": {"recipe": "translation", "langs": ["deu_Latn", "eng_Latn"],
                                           "target_lang": "swh_Latn"}})
    want = {"model": "gemma-3-270m", "method": "sparsegpt", "sparsity": "2:4",
            "calibration": "translation:deu+eng>swh", "seed": "3"}
    assert run_labels(cfg) == want
    assert run_labels(cfg.model_dump(mode="json")) == want
    assert run_labels({"method": "magnitude", "sparsity": 0.25}) == {
        "model": "?", "method": "magnitude", "sparsity": "0.25", "calibration": "-", "seed": "0"}
    assert calibration_label({"file": "x.txt"}) == "file" and calibration_label({}) == "-"
    assert dense_labels("runs/tiny/") == {"model": "tiny", "method": "dense", "sparsity": "-",
                                          "calibration": "-", "seed": "-"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from polyprune.testing import TEXTS, save_tiny
    root = tmp_path_factory.mktemp("labels")
    cal = root / "cal.txt"
    cal.write_text(" ".join(TEXTS * 12), encoding="utf-8")
    return root, save_tiny("llama", root / "tiny-llama"), cal


@pytest.mark.parametrize("sparsity,target", [(0.5, None), ("2:4", "fra_Latn")])
def test_grid_report_and_analysis_agree_on_one_run(tiny, monkeypatch, sparsity, target):
    """The unnamed grid cell of a config, the report row of a run folder pruned with that config and
    the analyses' group of that folder carry the same labels."""
    from polyprune.analysis.common import load_runs
    from polyprune.pipeline import run_prune
    from polyprune.report import collect
    monkeypatch.setenv("POLYPRUNE_PROGRESS", "0")
    root, model_dir, cal = tiny
    calib = {"file": str(cal), "langs": ["eng_Latn"], "target_lang": target, "nsamples": 2, "seqlen": 16}
    g = grid_from_dict({"name": "one", "dense": False, "axes": {
        "models": [str(model_dir)], "methods": ["wanda"], "sparsities": [sparsity], "calibrations": [calib],
        "seeds": [1]}})
    (cell,) = g.cells
    folder = run_prune(validate_config(cell.config), root / f"run-{cell.id}")
    (folder / "results").mkdir()
    (folder / "results" / "perplexity.json").write_text(json.dumps(
        {"task": "perplexity", "primary": {"metric": "ppl", "higher_is_better": False, "per_lang": {"eng_Latn": 9.0}}}),
        encoding="utf-8")
    (entry,) = collect(folder)
    want_cal = "file:eng>fra" if target else "file:eng"
    assert cell.labels == {"model": "tiny-llama", "method": "wanda", "sparsity": str(sparsity),
                           "calibration": want_cal, "seed": "1"}
    assert {**entry.labels, "seed": entry.seed} == {**cell.labels, "variant": "-"}
    (run,) = load_runs([folder])
    assert run.group == run.key == cell.labels["calibration"]


def test_runs_on_two_unlabelled_calibration_files_are_two_analysis_groups(tmp_path):
    """A calibration file without languages is labelled ``file`` in grids; analyses tell two such
    files apart by name, so their runs are not taken for seeds of one run."""
    from polyprune.analysis.common import RunInfo
    from polyprune.config import RunConfig
    runs = [RunInfo(tmp_path / n, RunConfig(calibration={"file": f"/data/{n}.txt"})) for n in ("news", "code")]
    assert [r.group for r in runs] == ["file:news", "file:code"]
    with_lang = RunInfo(tmp_path / "x", RunConfig(calibration={"file": "/data/news.txt", "langs": ["eng_Latn"]}))
    assert with_lang.group == "file:eng"
