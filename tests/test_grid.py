"""Grids: expansion, stable hashing, bad input, failure handling, kill -9 resume, Ray."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import forked
from polyprune.errors import UserError
from polyprune.grid import (Cell, canonical_hash, execute_cell, grid_from_dict, is_done, load_grid, run_grid)


@pytest.fixture(scope="module")
def cal_file(tmp_path_factory) -> Path:
    from polyprune.testing import TEXTS
    p = tmp_path_factory.mktemp("cal") / "cal.txt"
    p.write_text(" ".join(TEXTS * 12), encoding="utf-8")
    return p


def _grid(cal_file, **over) -> dict:
    g = {"name": "t", "defaults": {"calibration": {"nsamples": 2, "seqlen": 16}},
         "axes": {"models": ["m"], "methods": ["wanda", "magnitude"], "sparsities": [0.5, "2:4"],
                  "calibrations": [{"name": "a", "file": str(cal_file)}, {"name": "b", "file": str(cal_file),
                                                                            "nsamples": 3}],
                  "seeds": [0, 1]},
         "exclude": [{"method": "wanda", "sparsity": "2:4", "seed": 1}]}
    g.update(over)
    return g


def test_expansion_counts_labels_and_dedup(cal_file):
    g = grid_from_dict(_grid(cal_file))
    kinds = [c.kind for c in g.cells]
    # dense 1 · wanda 2 sparsities × 2 calibrations × 2 seeds − 2 excluded = 6 · magnitude ignores the
    # calibration axis: 2 sparsities × 2 seeds = 4
    assert kinds.count("dense") == 1 and kinds[0] == "dense"
    wanda = [c for c in g.cells if c.labels["method"] == "wanda"]
    mag = [c for c in g.cells if c.labels["method"] == "magnitude"]
    assert len(wanda) == 6 and len(mag) == 4 and len(g.cells) == 11
    assert not any(c.labels["sparsity"] == "2:4" and c.labels["seed"] == "1" for c in wanda)
    assert {c.labels["calibration"] for c in mag} == {"-"}
    assert all(c.config["calibration"].get("file") is None for c in mag)
    two4 = next(c for c in wanda if c.labels["sparsity"] == "2:4")
    assert two4.config["pattern"] == "2:4" and two4.config["sparsity"] == 0.5
    b = next(c for c in wanda if c.labels["calibration"] == "b")
    assert b.config["calibration"]["nsamples"] == 3 and b.config["calibration"]["seqlen"] == 16
    assert len({c.dirname for c in g.cells}) == len(g.cells)
    assert g.cells[1].dirname == f"m-wanda-0.5-a-s0-{g.cells[1].id}"


def test_method_entries_merge_into_calibration(cal_file):
    g = grid_from_dict({"name": "t", "dense": False, "axes": {
        "methods": [{"name": "prog", "method": "wanda-contrastive", "calibration": {"contrast_lang": "fra_Latn"}}],
        "calibrations": [{"name": "x", "file": str(cal_file)}]}})
    (c,) = g.cells
    assert c.labels["method"] == "prog"
    assert c.config["calibration"]["contrast_lang"] == "fra_Latn" and c.config["calibration"]["file"] == str(cal_file)


def test_hash_is_stable_and_content_defined(cal_file):
    base = {"name": "t", "dense": False, "axes": {"models": ["org/model"], "methods": ["magnitude"],
                                                  "sparsities": [0.5], "seeds": [3]}}
    (c,) = grid_from_dict(base).cells
    # the canonical hash of the resolved config: fixed forever for this content
    expect = canonical_hash({"v": 1, "kind": "prune", "config": {"model": "org/model", "method": "magnitude",
                                                                 "seed": 3}, "evaluations": []})
    assert c.id == expect == "e99ec8d75f"
    # key order, explicit defaults, data paths and devices do not change it
    same = {"dense": False, "name": "other", "axes": {"seeds": [3], "sparsities": [{"sparsity": 0.5}],
                                                      "methods": [{"method": "magnitude", "sequential": True}],
                                                      "models": [{"model": "org/model", "device": "cpu"}]},
            "data_dir": "/somewhere"}
    assert grid_from_dict(same).cells[0].id == c.id
    for change in ({"seeds": [4]}, {"sparsities": [0.6]}, {"methods": ["random"]}):
        other = {**base, "axes": {**base["axes"], **change}}
        assert grid_from_dict(other).cells[0].id != c.id
    # evaluations are part of the cell
    ev = {**base, "evaluations": [{"task": "perplexity", "langs": ["eng_Latn"], "limit": 5}]}
    assert grid_from_dict(ev).cells[0].id != c.id
    # a different process (hash seed) computes the same id
    code = ("from polyprune.grid import grid_from_dict;"
            f"print(grid_from_dict({base!r}).cells[0].id)")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == c.id


@pytest.mark.parametrize("text, needle", [
    ("axes: [unclosed", "is not well-formed YAML at line 1"),
    ("axis: {methods: [wanda]}", "unknown key 'axis'; valid keys: name, description, defaults, axes"),
    ("axes: {method: [wanda]}", "unknown key 'axes.method'; valid keys: models, methods, sparsities"),
    ("axes: {methods: [{method: magnitude, colour: red}]}", "axes.methods[0]: unknown key 'colour'"),
    ("axes: {methods: []}", "axes.methods is empty"),
    ("", "is empty"),
    ("axes: {methods: [wandaa]}", "unknown method 'wandaa'"),
    ("axes: {methods: [wanda], calibrations: [{recipe: nope, langs: [eng_Latn]}]}", "unknown calibration recipe 'nope'"),
    ("axes: {methods: [wanda], calibrations: [{recipe: text, langs: [klingon]}]}", "klingon"),
    ("axes: {methods: [wanda]}", "needs calibration data"),
    ("axes: {methods: [magnitude], sparsities: [1.5]}", "outside (0, 1)"),
    ("axes: {methods: [magnitude]}\nevaluations: [{task: nosuchtask}]", "unknown task 'nosuchtask'"),
    ("axes: {methods: [magnitude]}\nevaluations: [{task: perplexity, options: {bogus: 1}}]", "bogus"),
    ("axes: {methods: [magnitude]}\nexclude: [{method: wanda}]", "exclude[0]: method 'wanda' is not a value"),
    ("axes: {methods: [magnitude], seeds: [0]}\nexclude: [{seed: 0}]", "no cells"),
    ("axes: {methods: [magnitude]}\nanalyses: [{what: nope}]", "unknown analysis 'nope'"),
    ("axes: {methods: [magnitude]}\nanalyses: [{what: mask_iou}]", "compares several runs"),
    ("axes: {methods: [magnitude]}\nanalyses: [{what: snr, options: {nsentence: 3}}]", "unknown option 'nsentence'"),
])
def test_bad_grids_are_one_line_user_errors(tmp_path, text, needle):
    p = tmp_path / "g.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_grid(p)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_bad_grid_exits_2_and_starts_nothing(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("axes: {methods: [magnitude], sparsities: [0.5]}\nresources: {cpus: 2}\n")
    out = tmp_path / "runs"
    r = forked.polyprune("run", str(p), "--out", str(out))
    assert r.returncode == 2
    assert "unknown key 'resources.cpus'" in r.stderr and "num_cpus" in r.stderr
    assert not out.exists()


def test_output_dir_of_another_grid_is_refused(tmp_path, cal_file, monkeypatch):
    monkeypatch.setattr("polyprune.grid.cells._do_cell", lambda cell, tmp, cache, data_dir: None)
    g1 = grid_from_dict({"name": "one", "dense": False, "axes": {"methods": ["magnitude"]}})
    run_grid(g1, tmp_path, in_process=True, show=False)
    before = (tmp_path / "grid.json").read_text()
    g2 = grid_from_dict({"name": "two", "dense": False, "axes": {"methods": ["magnitude"]}})
    with pytest.raises(UserError, match="holds the runs of grid 'one'"):
        run_grid(g2, tmp_path, in_process=True, show=False)
    assert (tmp_path / "grid.json").read_text() == before
    stranger = tmp_path / "other"
    stranger.mkdir()
    (stranger / "x.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no grid.json"):
        run_grid(g1, stranger, in_process=True, show=False)


def test_failed_cell_is_recorded_grid_goes_on_and_resume_redoes_only_it(tmp_path, monkeypatch):
    calls = []

    def fake(cell, tmp, cache, data_dir):
        calls.append(cell.labels["sparsity"])
        if cell.labels["sparsity"] == "0.6" and len([c for c in calls if c == "0.6"]) == 1:
            raise RuntimeError("boom")
        (tmp / "results").mkdir()
        (tmp / "results" / "x.json").write_text("{}")

    monkeypatch.setattr("polyprune.grid.cells._do_cell", fake)
    g = grid_from_dict({"name": "t", "dense": False, "axes": {"methods": ["magnitude"], "sparsities": [0.5, 0.6, 0.7]}})
    s = run_grid(g, tmp_path, in_process=True, show=False)
    assert (s.done, len(s.failed)) == (2, 1) and not s.ok
    bad = tmp_path / g.cells[1].dirname
    assert not is_done(bad) and json.loads((bad / "error.json").read_text())["error"] == "RuntimeError: boom"
    assert not (bad / "results").exists()
    done_mtime = (tmp_path / g.cells[0].dirname / "DONE").stat().st_mtime_ns
    s2 = run_grid(g, tmp_path, in_process=True, show=False)
    assert (s2.skipped, s2.done, s2.failed) == (2, 1, [])
    assert calls == ["0.5", "0.6", "0.7", "0.6"]
    assert is_done(bad) and not (bad / "error.json").exists()
    assert (tmp_path / g.cells[0].dirname / "DONE").stat().st_mtime_ns == done_mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_real_cell_on_tiny_model_writes_a_run_folder(tmp_path, tiny_dir, cal_file):
    g = grid_from_dict({"name": "t", "defaults": {"calibration": {"nsamples": 2, "seqlen": 16}},
                        "axes": {"models": [str(tiny_dir("llama"))], "methods": ["wanda"],
                                 "calibrations": [{"name": "c", "file": str(cal_file)}]}})
    s = run_grid(g, tmp_path, in_process=True, show=False)
    assert s.ok and s.done == 2
    from polyprune.run import is_run, read_config
    run = tmp_path / g.cells[1].dirname
    assert is_run(run) and read_config(run).method == "wanda"
    rec = json.loads((run / "record.json").read_text())
    assert abs(rec["achieved_sparsity"] - 0.5) < 1e-6
    assert json.loads((run / "cell.json").read_text())["id"] == g.cells[1].id


def _wait_for(pred, timeout=600.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise TimeoutError


def test_kill_9_of_a_cell_process_then_resume(tmp_path, tiny_dir, cal_file):
    psutil = pytest.importorskip("psutil")
    import threading
    grid = {"name": "crash", "dense": False, "defaults": {"calibration": {"nsamples": 8, "seqlen": 32}},
            "axes": {"models": [str(tiny_dir("llama"))], "methods": ["sparsegpt", "wanda"],
                     "calibrations": [{"name": "c", "file": str(cal_file)}]}}
    gp = tmp_path / "g.yaml"
    gp.write_text(yaml.safe_dump(grid))
    out = tmp_path / "runs"
    g = load_grid(gp)
    first, second = g.cells
    from polyprune.grid import prepare_out
    prepare_out(g, out)
    assert execute_cell(first, out)["status"] == "done"  # finished before the crash
    done = (out / first.dirname / "DONE").stat().st_mtime_ns
    masks = (out / first.dirname / "masks.safetensors").read_bytes()
    box = {}
    runner = threading.Thread(target=lambda: box.update(s=run_grid(g, out, workers=1, show=False)))
    runner.start()
    try:  # the second cell runs in a subprocess: kill -9 it half-way (its temp folder exists)
        _wait_for(lambda: list(out.glob(f".{second.dirname}.tmp-*")))
        def is_cell(k):  # the cell's process, not tests/forked.py's server
            try:
                return k.cmdline()[1:3] == ["-m", "polyprune.grid"]
            except psutil.Error:
                return False
        kids = [k for k in psutil.Process(os.getpid()).children(recursive=True) if is_cell(k)]
        assert kids
        for k in kids:
            os.kill(k.pid, signal.SIGKILL)
    finally:
        runner.join(timeout=600)
    s = box["s"]
    assert (s.skipped, s.done, len(s.failed)) == (1, 0, 1)
    err = json.loads((out / second.dirname / "error.json").read_text())
    assert "killed by signal 9" in err["error"]
    assert not is_done(out / second.dirname)
    s = run_grid(g, out, in_process=True, show=False)
    assert (s.skipped, s.done, s.failed) == (1, 1, [])
    assert (out / first.dirname / "DONE").stat().st_mtime_ns == done
    assert (out / first.dirname / "masks.safetensors").read_bytes() == masks
    assert is_done(out / second.dirname) and not (out / second.dirname / "error.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_execute_cell_leaves_nothing_visible_before_done(tmp_path, monkeypatch):
    seen = {}

    def fake(cell, tmp, cache, data_dir):
        seen["visible"] = sorted(p.name for p in tmp.parent.iterdir() if not p.name.startswith("."))
        (tmp / "partial.txt").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setattr("polyprune.grid.cells._do_cell", fake)
    cell = Cell("abc", "prune", {"model": "m", "method": "magnitude", "sparsity": "0.5", "calibration": "-",
                                 "seed": "0"}, {"model": "m", "method": "magnitude"})
    with pytest.raises(KeyboardInterrupt):
        execute_cell(cell, tmp_path)
    # nothing partial: only the interrupted marker (not a failure; the cell is redone)
    assert seen["visible"] == [] and [p.name for p in tmp_path.iterdir()] == [cell.dirname]
    assert sorted(p.name for p in (tmp_path / cell.dirname).iterdir()) == ["cell.json", "interrupted.json"]
    assert not is_done(tmp_path / cell.dirname)


def test_ray_local_instance(tmp_path, tiny_dir):
    ray = pytest.importorskip("ray")
    g = grid_from_dict({"name": "r", "dense": True, "resources": {"num_cpus": 1},
                        "axes": {"models": [str(tiny_dir("llama"))], "methods": ["magnitude"]}})
    for k in ("RAY_raylet_start_wait_time_s", "RAY_agent_register_timeout_ms"):  # slow starts on a busy machine
        os.environ.setdefault(k, "300" if k.endswith("_s") else "300000")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"POLYPRUNE_PROGRESS": "0"}})
    except Exception as e:  # noqa: BLE001
        ray.shutdown()
        pytest.skip(f"no local Ray instance could start here: {str(e).splitlines()[0]}")
    try:
        s = run_grid(g, tmp_path, ray="local", show=False)
    finally:
        ray.shutdown()
    assert s.ok and s.done == 2
    assert all(is_done(tmp_path / c.dirname) for c in g.cells)
    rec = json.loads((tmp_path / g.cells[1].dirname / "record.json").read_text())
    assert rec["method"] == "magnitude"


def test_cells_pass_every_run_setting_to_the_engine(tmp_path, tiny_dir, cal_file):
    """A cell prunes exactly as `polyprune prune` with the same config: refinement and allocation
    (and their options) reach the engine, and the masks equal a single run's byte for byte."""
    from polyprune.config import validate_config
    from polyprune.pipeline import run_prune
    method = {"name": "owl-dsnot", "method": "wanda", "allocation": "owl", "refine": "dsnot",
              "refine_options": {"max_cycles": 3}}
    g = grid_from_dict({"name": "t", "defaults": {"calibration": {"nsamples": 2, "seqlen": 16}},
                        "axes": {"models": [str(tiny_dir("llama"))], "methods": [method],
                                 "calibrations": [{"name": "c", "file": str(cal_file)}]}, "dense": False})
    assert run_grid(g, tmp_path / "grid", in_process=True, show=False).ok
    cell = tmp_path / "grid" / g.cells[0].dirname
    rec = json.loads((cell / "record.json").read_text())
    assert rec["refine"] == "dsnot" and rec["refine_options"] == {"max_cycles": 3}
    single = run_prune(validate_config(g.cells[0].config), tmp_path / "single")
    assert (single / "masks.safetensors").read_bytes() == (cell / "masks.safetensors").read_bytes()
