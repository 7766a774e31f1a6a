"""Fault injection: hostile names, races, damaged artifacts, full disks, signals, SIGKILL at seeded
random moments then a rerun that must give the same bytes. Tiny seeded models only; the longer
sweeps (more kill seeds per command) are in benchmarks/fault_injection.py."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import forked
import polyprune as pp
from polyprune import io as pio
from polyprune.errors import UserError
from polyprune.grid import Cell, execute_cell, grid_from_dict, is_done, load_grid, run_grid

# kill moments per command; benchmarks/fault_injection.py raises it for a longer sweep
SEEDS = int(os.environ.get("POLYPRUNE_FAULT_SEEDS", "0"))


def seeds(default: int) -> range:
    return range(max(SEEDS, default))


TEXT = ("The committee met on Tuesday to discuss the budget. " * 40
        + "Le comité s'est réuni mardi pour discuter du budget. " * 40)


# ------------------------------------------------------------------------------------- plumbing
@pytest.fixture(scope="module")
def calfile(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cal") / "cal.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p




def _env():
    return {**os.environ, "POLYPRUNE_PROGRESS": "0"}


def spawn(*args, cwd=None) -> forked.Popen:
    """``python -m polyprune ARGS`` in its own process (forked with torch imported: tests/forked.py)."""
    return forked.Popen(["-m", "polyprune", *map(str, args)], env=_env(), cwd=cwd)


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return forked.polyprune(*map(str, args), cwd=cwd)


def one_line_exit_2(r) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def dot_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


VOLATILE = {"timings_s", "finished_at", "memory", "seconds", "versions"}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (JSON without timings; grid DONE records and logs left out)."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel.startswith("logs/") or p.name in ("DONE", "grid.json"):
            continue
        if p.suffix == ".json":
            d = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(d, dict):
                d = {k: v for k, v in d.items() if k not in VOLATILE}
            out[rel] = json.dumps(d, sort_keys=True).encode()
        else:
            out[rel] = p.read_bytes()
    return out


def wait_for(pred, timeout=300.0, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError


def kill_at(proc, rng: random.Random, trigger, span: float) -> None:
    """SIGKILL ``proc`` a seeded random time within ``span`` seconds after ``trigger()`` holds."""
    wait_for(trigger, proc=proc)
    time.sleep(rng.uniform(0.0, span))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


# --------------------------------------------------------------------------------- containment
HOSTILE = [("../escape", "path separator"), ("/abs/path", "path separator"), ("a\\b", "path separator"),
           ("..", "not a file name"), (".", "not a file name"), ("x\x00y", "NUL"), ("n" * 200, "characters long"),
           ("", "not a name")]


@pytest.mark.parametrize("name,why", HOSTILE)
def test_check_name_refuses_what_could_leave_its_folder(name, why):
    with pytest.raises(UserError, match=why) as e:
        pio.child("/base", name, "evaluation name", ".json")
    assert "evaluation name" in str(e.value)
    assert pio.child("/base", "ppl-eng", "x", ".json") == Path("/base/ppl-eng.json")


@pytest.mark.parametrize("field,where", [
    ({"name": "../outside"}, "grid name"),
    ({"evaluations": [{"task": "perplexity", "name": "../../pwned"}]}, "evaluations[0].name"),
    ({"evaluations": [{"task": "perplexity", "name": "/tmp/pwned"}]}, "evaluations[0].name"),
    ({"axes": {"methods": [{"name": "a/b", "method": "magnitude"}]}}, "axes.methods[0] name"),
    ({"axes": {"models": [{"name": "..", "model": "m"}]}}, "axes.models[0] name"),
    ({"axes": {"methods": ["magnitude"], "sparsities": [{"name": "x\x00", "sparsity": 0.5}]}}, "axes.sparsities[0] name"),
    ({"axes": {"methods": ["magnitude"], "calibrations": [{"name": "c/d", "recipe": "text"}]}},
     "axes.calibrations[0] name"),
])
def test_grid_names_that_become_paths_are_contained(field, where):
    g = {"name": "t", "axes": {"methods": ["magnitude"]}, **field}
    with pytest.raises(UserError, match=r"^.*" + where.replace("[", r"\[").replace("]", r"\]")):
        grid_from_dict(g, check_registries=False)


def test_grid_name_without_out_stays_under_runs(tmp_path, cli, monkeypatch):
    (tmp_path / "g.yaml").write_text("name: ../../escaped\naxes: {methods: [magnitude]}\n")
    monkeypatch.chdir(tmp_path)
    r = cli("run", "g.yaml", "--dry-run")
    one_line_exit_2(r)
    assert "grid name" in r.stderr and "path separator" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"] and not (tmp_path.parent / "escaped").exists()


def test_unknown_language_as_a_path_is_refused(tiny_dir, tmp_path, cli):
    r = cli("prune", "--model", tiny_dir("llama"), "--calibration", "text", "--lang", "../../etc",
            "--nsamples", "2", "--seqlen", "16", "--out", tmp_path / "run")
    one_line_exit_2(r)
    assert "unknown language" in r.stderr and not (tmp_path / "run").exists() and not dot_entries(tmp_path)


def test_result_name_of_eval_is_contained(tmp_path, monkeypatch):
    from polyprune import evaluate as ev
    monkeypatch.setattr("polyprune.run.load_run_or_model", lambda *a, **k: (torch.nn.Linear(1, 1), None, None))
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: {"task": "../../../outside"})
    with pytest.raises(UserError, match="result name"):
        ev.run_eval("some-model", "perplexity", out=tmp_path / "res")
    assert not (tmp_path / "res").exists()


# -------------------------------------------------------------------------------- strict types
@pytest.mark.parametrize("over,needle", [
    ({"axes": {"methods": ["magnitude"], "seeds": [True]}}, "axes.seeds.0"),
    ({"axes": {"methods": ["magnitude"], "seeds": ["1"]}}, "axes.seeds.0"),
    ({"defaults": {"seed": True}}, "seed"),
    ({"defaults": {"sparsity": True}}, "sparsity"),
    ({"defaults": {"calibration": {"nsamples": "8"}}}, "calibration.nsamples"),
    ({"defaults": {"sequential": 1}}, "sequential"),
    ({"evaluations": [{"task": "perplexity", "limit": True}]}, "evaluations.0.limit"),
    ({"dense": "yes"}, "dense"),
])
def test_recipe_scalars_are_strictly_typed(over, needle):
    g = {"name": "t", "axes": {"methods": ["magnitude"]}}
    g.update(over)
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        grid_from_dict(g, check_registries=False)


def test_strict_config_keeps_ints_as_floats_for_sparsity():
    from polyprune.config import validate_config
    assert validate_config({"sparsity": 1}, partial=True).sparsity == 1.0
    assert validate_config({"method": "magnitude", "seed": 3}).seed == 3
    with pytest.raises(UserError, match="seed"):
        validate_config({"seed": True})


# ------------------------------------------------------------------------------ non-finite weights
def _sets_calibration():
    from polyprune.calibration import Calibration, Sample
    g = torch.Generator().manual_seed(0)
    mk = lambda lang, s: Sample(torch.randint(5, 380, (12,), generator=g), None, (lang,), s)  # noqa: E731
    return Calibration([mk("eng_Latn", "target"), mk("fra_Latn", "target"), mk("eng_Latn", "contrast"),
                        mk("fra_Latn", "contrast")])


@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt", "gptq", "sparsegpt-gptq", "ria",
                                    "wanda-contrastive", "lang-wanda"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_refused_for_every_method_naming_the_parameter(method, bad, tiny):
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight[3, 5] = bad
    cal = _sets_calibration()
    if method not in ("wanda-contrastive",):
        from polyprune.calibration import Calibration
        cal = Calibration([s for s in cal.samples if s.set == "target"])
    opts = {"bits": 4} if "gptq" in method else {}
    with pytest.raises(UserError, match=r"non-finite weights .*model\.layers\.1\.self_attn\.k_proj\.weight"):
        pp.prune(model, cal, method, 0.5, method_options=opts)


def test_every_registered_method_is_covered_by_the_non_finite_test():
    from polyprune.methods import METHODS, _load_builtin
    _load_builtin()
    assert set(METHODS) == {"magnitude", "random", "wanda", "sparsegpt", "gptq", "sparsegpt-gptq", "ria",
                            "wanda-contrastive", "lang-wanda"}


# ------------------------------------------------------------------------------ clear one-liners
def test_unparseable_and_non_utf8_config_yaml(tiny_dir, calfile, tmp_path, cli):
    run = tmp_path / "run"
    r = cli("prune", "--model", tiny_dir("llama"), "--method", "magnitude", "--out", run)
    assert r.returncode == 0, r.stderr
    good = (run / "config.yaml").read_bytes()
    for damage, needle in [(b"model: [unclosed\n", "not valid YAML"), (b"\xff\xfe\x00bad", "not UTF-8"),
                           (b"- a\n- b\n", "not a run configuration")]:
        (run / "config.yaml").write_bytes(damage)
        for args in (("apply", "--masks", run, "--out", tmp_path / "applied"),
                     ("export", run, "--format", "dense", "--out", tmp_path / "exp")):
            r = cli(*args)
            one_line_exit_2(r)
            assert needle in r.stderr and "config.yaml" in r.stderr, r.stderr
            assert not (tmp_path / "applied").exists() and not (tmp_path / "exp").exists()
    (run / "config.yaml").write_bytes(good)


def test_non_utf8_calibration_file_and_grid(tiny_dir, tmp_path, cli):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("Le comité s'est réuni. " * 50).encode("latin-1"))
    r = cli("prune", "--model", tiny_dir("llama"), "--calibration-file", bad, "--nsamples", "2", "--seqlen", "16",
            "--out", tmp_path / "run")
    one_line_exit_2(r)
    assert "not UTF-8" in r.stderr and str(bad) in r.stderr and not (tmp_path / "run").exists()
    g = tmp_path / "g.yaml"
    g.write_bytes("name: t\ndescription: caf\xe9\naxes: {methods: [magnitude]}\n".encode("latin-1"))
    r = cli("run", g, "--out", tmp_path / "runs")
    one_line_exit_2(r)
    assert "not UTF-8" in r.stderr and str(g) in r.stderr and not (tmp_path / "runs").exists()


def test_seqlen_beyond_positions_refused_before_weights_load(tiny_dir, calfile, tmp_path, cli, monkeypatch):
    import transformers
    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    big = tmp_path / "big.txt"
    big.write_text(TEXT * 4, encoding="utf-8")
    r = cli("prune", "--model", tiny_dir("gpt2"), "--calibration-file", big, "--nsamples", "2", "--seqlen", "300",
            "--out", tmp_path / "run")  # tiny gpt2: n_positions=256
    one_line_exit_2(r)
    assert "exceeds the 256 positions" in r.stderr and "--seqlen 256" in r.stderr
    assert calls == [] and not (tmp_path / "run").exists() and not dot_entries(tmp_path)


def test_out_that_cannot_be_created(tiny_dir, tmp_path, cli, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    r = cli("prune", "--model", tiny_dir("llama"), "--method", "magnitude", "--out", blocker / "run")
    one_line_exit_2(r)
    assert "cannot create" in r.stderr and str(blocker) in r.stderr
    import tempfile
    for code in (errno.EACCES, errno.EROFS):  # root ignores permissions: the OS answer is injected
        def refuse(*a, _code=code, **k):
            raise OSError(_code, os.strerror(_code))
        monkeypatch.setattr(tempfile, "mkdtemp", refuse)
        r = cli("prune", "--model", tiny_dir("llama"), "--method", "magnitude", "--out", tmp_path / "ro" / "run")
        monkeypatch.undo()
        one_line_exit_2(r)
        assert os.strerror(code) in r.stderr and str(tmp_path / "ro") in r.stderr
        assert not (tmp_path / "ro" / "run").exists() and not dot_entries(tmp_path / "ro")


class _FullDisk:
    def __init__(self, real):
        self.real = real

    def __call__(self, fd, *a, **k):
        f = self.real(fd, *a, **k)

        class W:
            def __enter__(s):
                return s

            def __exit__(s, *exc):
                f.close()

            def write(s, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return W()


def test_full_disk_in_prune_leaves_nothing(tiny_dir, tmp_path, cli, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a[1]))
    monkeypatch.setattr("polyprune.run.save_masks", full)
    r = cli("prune", "--model", tiny_dir("llama"), "--method", "magnitude", "--out", tmp_path / "run")
    one_line_exit_2(r)
    assert "No space left on device" in r.stderr and "masks.safetensors" in r.stderr and "free disk space" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_full_disk_in_a_grid_leaves_no_temp_file(tmp_path, monkeypatch, cli):
    g = tmp_path / "g.yaml"
    g.write_text("name: t\ndense: false\naxes: {methods: [magnitude]}\n")
    monkeypatch.setattr("polyprune.io.os.fdopen", _FullDisk(os.fdopen))
    r = cli("run", g, "--out", tmp_path / "runs", "--in-process")
    one_line_exit_2(r)
    assert "No space left on device" in r.stderr and "grid.json" in r.stderr
    assert list((tmp_path / "runs").iterdir()) == []


def test_full_disk_in_a_cell_fails_that_cell_without_temp_folders(tmp_path, monkeypatch):
    g = grid_from_dict({"name": "t", "dense": False, "axes": {"methods": ["magnitude"], "sparsities": [0.5, 0.6]}})

    def fake(cell, tmp, cache, data_dir):
        if cell.labels["sparsity"] == "0.6":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "masks.safetensors"))
        (tmp / "results").mkdir()
        (tmp / "results" / "x.json").write_text("{}")
    monkeypatch.setattr("polyprune.grid.cells._do_cell", fake)
    s = run_grid(g, tmp_path, in_process=True, show=False)
    assert s.done == 1 and "No space left on device" in s.failed[0][1]
    assert dot_entries(tmp_path) == []


# ---------------------------------------------------------------------------- exclusive ownership
def test_second_writer_of_a_run_folder_is_refused_naming_the_pid(tiny_dir, tmp_path, cli):
    out = tmp_path / "run"
    lock = pio.try_own(out)  # as another prune writing it would
    try:
        r = cli("prune", "--model", tiny_dir("llama"), "--method", "magnitude", "--out", out)
        one_line_exit_2(r)
        assert f"is being written by another polyprune process (pid {os.getpid()}); wait or choose another --out" \
            in r.stderr
        assert not out.exists()
    finally:
        pio.release(lock, out)
    assert not dot_entries(tmp_path)
    assert cli("prune", "--model", tiny_dir("llama"), "--method", "magnitude", "--out", out).returncode == 0
    assert not dot_entries(tmp_path)


def test_stale_lock_of_a_killed_process_does_not_block(tiny_dir, tmp_path, cli):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from polyprune import io; "
                               f"held = io.try_own({str(out)!r}); print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env=_env())
    assert holder.stdout.readline().strip() == "held"
    assert (tmp_path / ".run.lock").exists() and pio.try_own(out) is None
    holder.kill()
    holder.wait()
    r = cli("prune", "--model", tiny_dir("llama"), "--method", "magnitude", "--out", out)
    assert r.returncode == 0, r.stderr
    assert not dot_entries(tmp_path)


def test_two_prunes_with_the_same_new_out_exactly_one_succeeds(tiny_dir, calfile, tmp_path):
    out = tmp_path / "run"
    args = ("prune", "--model", tiny_dir("llama"), "--calibration-file", calfile, "--nsamples", "4", "--seqlen",
            "32", "--method", "wanda", "--out", out)
    procs = [spawn(*args), spawn(*args)]
    res = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in res)
    assert codes == [0, 2], res
    loser = next(r for r in res if r[2] == 2)[1]
    assert ("being written by another polyprune process" in loser or "already exists" in loser), loser
    assert pp.load_masks(out) and not dot_entries(tmp_path)


def test_grid_cells_owned_elsewhere_are_left_to_their_owner(tmp_path, monkeypatch):
    calls = []

    def fake(cell, tmp, cache, data_dir):
        calls.append(cell.labels["sparsity"])
        (tmp / "results").mkdir()
        (tmp / "results" / "x.json").write_text(json.dumps({"s": cell.labels["sparsity"]}))
    monkeypatch.setattr("polyprune.grid.cells._do_cell", fake)
    g = grid_from_dict({"name": "t", "dense": False, "axes": {"methods": ["magnitude"], "sparsities": [0.5, 0.6, 0.7]}})
    from polyprune.grid import prepare_out
    prepare_out(g, tmp_path)
    busy = tmp_path / g.cells[1].dirname
    lock = pio.try_own(busy)
    try:
        s = run_grid(g, tmp_path, in_process=True, show=False)
    finally:
        pio.release(lock, busy)
    assert (s.done, s.busy, s.failed) == (2, 1, []) and calls == ["0.5", "0.7"] and not busy.exists()
    s = run_grid(g, tmp_path, in_process=True, show=False)
    assert (s.done, s.skipped) == (1, 2) and calls == ["0.5", "0.7", "0.6"]
    assert dot_entries(tmp_path) == []


def test_leftovers_of_a_killed_run_beside_a_finished_cell_are_swept(tmp_path, monkeypatch):
    calls = []
    g = _fake_cell_grid(monkeypatch, calls)
    run_grid(g, tmp_path, in_process=True, show=False)
    d = g.cells[0].dirname
    (tmp_path / f".{d}.lock").write_text("")  # killed between the rename and the release
    (tmp_path / f".{d}.lock.pid").write_text("999999\n")
    (tmp_path / f".{d}.old-1-2").mkdir()  # killed while replacing a damaged copy
    s = run_grid(g, tmp_path, in_process=True, show=False)
    assert (s.done, s.skipped) == (0, 2) and calls == ["0.5", "0.6"] and dot_entries(tmp_path) == []


def test_execute_cell_claim_is_atomic_under_threads(tmp_path, monkeypatch):
    """Many workers on one cell: it is computed once, and finished complete."""
    calls = []
    gate = threading.Barrier(6)

    def fake(cell, tmp, cache, data_dir):
        calls.append(1)
        time.sleep(0.2)
        (tmp / "results").mkdir()
        (tmp / "results" / "x.json").write_text("{}")
    monkeypatch.setattr("polyprune.grid.cells._do_cell", fake)
    cell = Cell("abc", "prune", {"model": "m", "method": "magnitude", "sparsity": "0.5", "calibration": "-",
                                 "seed": "0"}, {"model": "m", "method": "magnitude"})
    res = []

    def work():
        gate.wait()
        res.append(execute_cell(cell, tmp_path)["status"])
    ts = [threading.Thread(target=work) for _ in range(6)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(calls) == 1 and sorted(res).count("done") == 1
    assert set(res) <= {"done", "busy", "skipped"} and is_done(tmp_path / cell.dirname)
    assert dot_entries(tmp_path) == []


# ------------------------------------------------------------------------------ damaged cells
def _fake_cell_grid(monkeypatch, calls):
    def fake(cell, tmp, cache, data_dir):
        calls.append(cell.labels["sparsity"])
        (tmp / "masks.safetensors").write_bytes(b"M" * 64 + cell.labels["sparsity"].encode())
        (tmp / "results").mkdir()
        (tmp / "results" / "x.json").write_text(json.dumps(
            {"task": "perplexity", "primary": {"metric": "ppl", "per_lang": {"eng_Latn": 2.0}, "average": 2.0}}))
    monkeypatch.setattr("polyprune.grid.cells._do_cell", fake)
    return grid_from_dict({"name": "t", "dense": False, "axes": {"methods": ["magnitude"], "sparsities": [0.5, 0.6]}})


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "done-garbage"])
def test_damaged_finished_cell_is_redone_with_a_warning(damage, tmp_path, monkeypatch, caplog):
    calls = []
    g = _fake_cell_grid(monkeypatch, calls)
    run_grid(g, tmp_path, in_process=True, show=False)
    good, bad = (tmp_path / c.dirname for c in g.cells)
    before = tree(tmp_path)
    good_done = (good / "DONE").stat().st_mtime_ns
    m = bad / "masks.safetensors"
    if damage == "truncate":
        m.write_bytes(m.read_bytes()[:10])
    elif damage == "flip":
        b = bytearray(m.read_bytes())
        b[3] ^= 1
        m.write_bytes(bytes(b))
    elif damage == "delete":
        m.unlink()
    else:
        (bad / "DONE").write_text("{not json")
    assert not is_done(bad) and is_done(good)
    assert "redone" in caplog.text
    s = run_grid(g, tmp_path, in_process=True, show=False)
    assert (s.done, s.skipped) == (1, 1) and calls == ["0.5", "0.6", "0.6"]
    assert (good / "DONE").stat().st_mtime_ns == good_done and tree(tmp_path) == before


def test_manifest_lists_every_file_and_extra_files_are_allowed(tmp_path, monkeypatch):
    calls = []
    g = _fake_cell_grid(monkeypatch, calls)
    run_grid(g, tmp_path, in_process=True, show=False)
    cell = tmp_path / g.cells[0].dirname
    files = json.loads((cell / "DONE").read_text())["files"]
    assert sorted(files) == ["cell.json", "masks.safetensors", "results/x.json"]
    assert files["masks.safetensors"]["size"] == 67 and files["masks.safetensors"]["sha256"] == pio.sha256_file(
        cell / "masks.safetensors")
    (cell / "results" / "later.json").write_text("{}")  # e.g. `polyprune eval` on the cell afterwards
    assert is_done(cell)


def test_report_skips_a_damaged_cell(tmp_path, monkeypatch):
    calls = []
    g = _fake_cell_grid(monkeypatch, calls)
    run_grid(g, tmp_path, in_process=True, show=False)
    from polyprune.report import collect
    (tmp_path / g.cells[1].dirname / "masks.safetensors").write_bytes(b"")
    folders = {e.folder.name for e in collect(tmp_path)}
    assert folders == {g.cells[0].dirname}


# ---------------------------------------------------------------------------------- signals
def test_sigterm_during_prune_removes_staging_and_exits_130(tiny_dir, calfile, tmp_path):
    runs = tmp_path / "runs"
    p = spawn("prune", "--model", tiny_dir("llama"), "--calibration-file", calfile, "--nsamples", "16",
              "--seqlen", "64", "--method", "sparsegpt", "--out", runs / "NAME")
    assert wait_for(lambda: runs.is_dir() and any(x.name.startswith(".NAME.tmp-") for x in runs.iterdir()),
                    proc=p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:  # finished before the signal arrived: nothing to check
        pytest.skip("the prune finished before SIGTERM")
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "interrupted; nothing was written", err
    assert list(runs.iterdir()) == []


def _tiny_grid(tmp_path, tiny_dir, calfile, data_dir=None, nsamples=4) -> Path:
    g = {"name": "faults", "dense": True,
         "defaults": {"calibration": {"nsamples": nsamples, "seqlen": 32}},
         "axes": {"models": [str(tiny_dir("llama"))], "methods": ["magnitude", "sparsegpt"],
                  "calibrations": [{"name": "c", "file": str(calfile)}]}}
    if data_dir is not None:
        g["evaluations"] = [{"task": "perplexity", "langs": ["eng_Latn"], "limit": 3}]
        g["data_dir"] = str(data_dir)
    p = tmp_path / "faults.yaml"
    p.write_text(yaml.safe_dump(g))
    return p


def test_sigint_of_a_grid_marks_the_cell_interrupted_and_rerun_finishes(tiny_dir, calfile, tmp_path):
    gp = _tiny_grid(tmp_path, tiny_dir, calfile)
    out = tmp_path / "runs"
    p = spawn("run", gp, "--out", out, "--no-report")  # each cell in its own process
    assert wait_for(lambda: len(list(out.glob("*/DONE"))) >= 1 and len(list(out.glob("logs/*.log"))) >= 2, proc=p)
    time.sleep(0.5)  # the second cell's process is running
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the grid finished before SIGINT")
    last = err.strip().splitlines()[-1]
    assert p.returncode == 130 and last.startswith("interrupted; ") and "rerun" in last, err
    g = load_grid(gp)
    states = {c.dirname: ("done" if is_done(out / c.dirname) else
                          "interrupted" if (out / c.dirname / "interrupted.json").is_file() else "none")
              for c in g.cells}
    assert "interrupted" in states.values() and not [d for d in states.values() if d == "failed"]
    assert not any((out / d / "error.json").exists() for d in states)
    assert sum(v == "done" for v in states.values()) >= 1 and f"{sum(v == 'done' for v in states.values())} cell" in last
    r = run_cli("run", gp, "--out", out, "--no-report", "--in-process")
    assert r.returncode == 0, r.stderr
    assert all(is_done(out / c.dirname) for c in g.cells) and dot_entries(out) == []


# ------------------------------------------------------------------------ SIGKILL, then rerun
def _staging(parent: Path, name: str):
    return lambda: parent.is_dir() and any(x.name.startswith(f".{name}.tmp-") for x in parent.iterdir())


def _any_staging(out: Path) -> bool:
    return out.is_dir() and any(x.name.startswith(".") and ".tmp-" in x.name for x in out.iterdir())


def written(args_for, out: Path) -> float:
    """Run ``args_for(out)``; the seconds from its staging folder's appearance to its exit: the
    window the kills below aim into."""
    p = spawn(*args_for(out))
    wait_for(_staging(out.parent, out.name), proc=p)
    t0 = time.time()
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return time.time() - t0


def _killed_then_rerun(args_for, out: Path, seeds, window: float, ref: dict):
    """SIGKILL ``args_for(out)`` at seeded moments while it writes (within the first 3/4 of the
    reference run's ``window``), then rerun with --force: the same bytes. The first kill hits a new
    folder, later ones a --force replacement of the finished one."""
    killed = 0
    for seed in seeds:
        rng = random.Random(seed)
        p = spawn(*args_for(out), *(["--force"] if out.exists() else []))
        kill_at(p, rng, _staging(out.parent, out.name), 0.75 * window)
        killed += p.returncode == -signal.SIGKILL
        if out.exists():  # killed after the rename: what is there is complete
            assert tree(out) == ref
        r = run_cli(*args_for(out), "--force")
        assert r.returncode == 0, r.stderr
        assert tree(out) == ref
        assert dot_entries(out.parent) == [], dot_entries(out.parent)
    assert killed, "every process finished before its kill moment"


@pytest.fixture(scope="module")
def ref_run(tiny_dir, calfile, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")

    def args(out):
        return ("prune", "--model", tiny_dir("llama"), "--calibration-file", calfile, "--nsamples", "8",
                "--seqlen", "32", "--method", "sparsegpt", "--seed", "3", "--out", out)
    return args, d / "run", written(args, d / "run")


def test_sigkill_prune_at_seeded_moments_then_rerun_is_byte_identical(ref_run, tmp_path):
    args, ref_dir, window = ref_run
    _killed_then_rerun(args, tmp_path / "run", seeds=seeds(3), window=window, ref=tree(ref_dir))


def test_sigkill_export_at_seeded_moments_then_rerun_is_byte_identical(ref_run, tmp_path):
    _, run, _ = ref_run

    def args(out):
        return ("export", run, "--format", "sparse-bitmask", "--out", out)
    window = written(args, tmp_path / "ref")
    # the model card and report name the export folder (its load lines): the same bytes up to that name
    ref = {k: v.replace(str(tmp_path / "ref").encode(), str(tmp_path / "exp").encode())
           for k, v in tree(tmp_path / "ref").items()}
    _killed_then_rerun(args, tmp_path / "exp", seeds=seeds(3), window=window, ref=ref)


def test_sigkill_apply_at_seeded_moments_then_rerun_is_byte_identical(ref_run, tmp_path):
    _, run, _ = ref_run

    def args(out):
        return ("apply", "--masks", run, "--out", out)
    window = written(args, tmp_path / "ref")
    _killed_then_rerun(args, tmp_path / "app", seeds=seeds(3), window=window, ref=tree(tmp_path / "ref"))


def test_grid_sigkilled_at_five_moments_resumes_byte_identical_without_recomputing(tiny_dir, calfile, tmp_path,
                                                                                   data_dir):
    gp = _tiny_grid(tmp_path, tiny_dir, calfile, data_dir)
    ref = tmp_path / "ref"
    r = run_cli("run", gp, "--out", ref, "--in-process", "--no-report")
    assert r.returncode == 0, r.stderr
    g = load_grid(gp)
    assert len(g.cells) == 3
    out = tmp_path / "runs"
    finished: dict[str, int] = {}  # cell → DONE mtime when first seen finished
    rng = random.Random(16)
    for k in seeds(5):  # moment k: after k cells are done (at most all but one), plus a seeded delay
        target = min(k, len(g.cells) - 1)
        p = spawn("run", gp, "--out", out, "--in-process", "--no-report")
        kill_at(p, rng, lambda: len(list(out.glob("*/DONE"))) >= target and _any_staging(out), 0.4)
        for c in g.cells:
            f = out / c.dirname
            if is_done(f):
                finished.setdefault(c.dirname, (f / "DONE").stat().st_mtime_ns)
    assert finished, "no cell finished between the kills"
    r = run_cli("run", gp, "--out", out, "--in-process", "--no-report")
    assert r.returncode == 0, r.stderr
    for d, mtime in finished.items():  # nothing finished was computed again
        assert (out / d / "DONE").stat().st_mtime_ns == mtime
    assert tree(out) == tree(ref)
    assert dot_entries(out) == []


def test_two_concurrent_grids_on_one_folder_leave_every_cell_complete(tiny_dir, calfile, tmp_path):
    gp = _tiny_grid(tmp_path, tiny_dir, calfile)
    out = tmp_path / "runs"
    procs = [spawn("run", gp, "--out", out, "--in-process", "--no-report") for _ in range(2)]
    res = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert [r[2] for r in res] == [0, 0], res
    g = load_grid(gp)
    computed = 0
    for so, _, _ in res:
        line = next(x for x in so.splitlines() if " done, " in x)
        computed += int(line.split(": ", 1)[1].split(" done")[0])
    assert computed <= len(g.cells)  # a cell is never computed twice at the same time
    r = run_cli("run", gp, "--out", out, "--in-process", "--no-report")  # picks up what a busy skip left
    assert r.returncode == 0
    for c in g.cells:
        f = out / c.dirname
        assert is_done(f)
        files = json.loads((f / "DONE").read_text())["files"]
        assert {"cell.json", "masks.safetensors", "config.yaml"} <= set(files) or c.kind == "dense"
    assert dot_entries(out) == []


# ------------------------------------------------------------------- more damaged artifacts
def test_damaged_kept_weights_are_one_line(ref_run, tmp_path, cli):
    import shutil
    _, run, _ = ref_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    w = mine / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    r = cli("apply", "--masks", mine, "--out", tmp_path / "applied")
    one_line_exit_2(r)
    assert "weights.safetensors is damaged" in r.stderr and not (tmp_path / "applied").exists()
    assert dot_entries(tmp_path) == []


def test_damaged_grid_json_is_one_line(tmp_path, cli):
    g = tmp_path / "g.yaml"
    g.write_text("name: t\ndense: false\naxes: {methods: [magnitude]}\n")
    out = tmp_path / "runs"
    out.mkdir()
    (out / "grid.json").write_bytes(b"\x00{trunc")
    (out / "some-cell").mkdir()
    r = cli("run", g, "--out", out, "--in-process")
    one_line_exit_2(r)
    assert "grid.json is unreadable" in r.stderr


def test_report_skips_a_folder_with_a_damaged_cell_json(tmp_path, monkeypatch):
    calls = []
    g = _fake_cell_grid(monkeypatch, calls)
    run_grid(g, tmp_path / "runs", in_process=True, show=False)
    (tmp_path / "runs" / "grid.json").unlink()  # a plain folder of run folders
    (tmp_path / "runs" / g.cells[0].dirname / "cell.json").write_text("{trunc")
    from polyprune.report import collect
    assert {e.folder.name for e in collect(tmp_path / "runs")} == {g.cells[1].dirname}


def test_grid_out_that_cannot_be_created_is_one_line(tmp_path, cli):
    g = tmp_path / "g.yaml"
    g.write_text("name: t\ndense: false\naxes: {methods: [magnitude]}\n")
    (tmp_path / "afile").write_text("x")
    r = cli("run", g, "--out", tmp_path / "afile" / "runs", "--in-process")
    one_line_exit_2(r)
    assert "Not a directory" in r.stderr and str(tmp_path / "afile") in r.stderr
