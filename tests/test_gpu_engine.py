"""The GPU-facing engine, tested on the CPU: bf16 models, placement checks, layer-by-layer onloading
(the same code path as on a GPU, with CPU as the compute device) and data-parallel calibration over
two gloo processes."""
import json
import os
import socket
import textwrap
import time

import pytest
import torch

import forked
import polyprune as pp
from polyprune.errors import UserError
from polyprune.onload import Onloader, check_device, check_dtype, place


def _agreement(a, b) -> float:
    return sum(int((a[k] == b[k]).sum()) for k in b) / sum(v.numel() for v in b.values())


def test_bf16_model_wanda_masks_agree_with_fp32(tiny, calib_ids):
    ref = pp.prune(tiny("llama"), calib_ids, "wanda", 0.5)
    got = pp.prune(tiny("llama").to(torch.bfloat16), calib_ids, "wanda", 0.5, keep_stats=True)
    agree = _agreement(got.masks, ref.masks)
    assert 0.99 <= agree < 1.0  # measured 0.99816 (4 × 24 tokens): bf16 weights and activations
    dtypes = {t.dtype for d in got.stats.values() for s in d.values() for t in s.values()}
    assert dtypes == {torch.float32}  # statistics fp32 although the model computes in bf16
    assert got.record["achieved_sparsity"] == 0.5


def test_statistics_are_fp32_under_bf16_activations(tiny, calib_ids):
    from polyprune.collect import capture, collect_layer_stats
    from polyprune.calibration import as_calibration
    model = tiny("llama")
    entries = capture(model, as_calibration(calib_ids), activation_dtype=torch.bfloat16)
    assert {e.hidden.dtype for e in entries} == {torch.bfloat16}
    layer = pp.model.find_layers(model)[1][0]
    stats = collect_layer_stats(layer, entries, 0, frozenset({"sqnorm", "hessian", "moments", "per_lang"}),
                                None, keep_outputs=False)
    ms = stats["self_attn.q_proj"].target
    assert ms.scaler_row.dtype == torch.float32 and ms.H.dtype == torch.float32 and ms.mean.dtype == torch.float64
    assert all(v.dtype == torch.float32 for v in ms.lang_sqsum.values())


@pytest.mark.parametrize("method,pattern,options", [("wanda", "unstructured", {}), ("sparsegpt", "2:4", {}),
                                                    ("wanda", "unstructured", {"allocation": "owl"}),
                                                    ("gptq", "unstructured", {"group_size": 16})])
@pytest.mark.parametrize("activation_device", [None, "cpu"])
def test_onloading_equals_all_resident(tiny, calib_ids, method, pattern, options, activation_device):
    engine = {k: v for k, v in options.items() if k == "allocation"}
    options = {k: v for k, v in options.items() if k != "allocation"}
    ref = pp.prune(tiny("gemma3"), calib_ids, method, 0.5, pattern, method_options=options, **engine)
    model = tiny("gemma3")
    io = Onloader(model, "cpu", activation_device)
    got = pp.prune(model, calib_ids, method, 0.5, pattern, layer_io=io, activation_device=io.activation_device,
                   method_options=options, **engine)
    assert set(got.masks) == set(ref.masks) and all(torch.equal(got.masks[k], ref.masks[k]) for k in ref.masks)
    assert set(got.weights) == set(ref.weights) and all(torch.equal(got.weights[k], ref.weights[k]) for k in ref.weights)
    assert got.record["layer_sparsity"] == ref.record["layer_sparsity"]


def test_pinned_onloading_writes_layers_back_into_their_host_buffers(tiny, calib_ids, monkeypatch):
    """A GPU run's pinned host copies, on the CPU: pinning is a recorded copy, and the move to the
    compute device is a copy too (as the H2D copy is), so the layer computes on other storage and
    must come back into the very host buffers (same data_ptr) with the pruned values."""
    import polyprune.onload as onload
    pins = []

    def pin_memory(self):
        copy = self.clone()
        pins.append(copy.data_ptr())
        return copy
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(onload, "_move", lambda t, device: t.clone())
    ref_model = tiny("llama")
    ref = pp.prune(ref_model, calib_ids, "sparsegpt", 0.5)  # weight-updating: every layer's values change
    model = tiny("llama")
    io = Onloader(model, "cpu", pin=True)
    layers = pp.model.find_layers(model)[1]
    ptrs = {n: t.data_ptr() for n, t in [*layers.named_parameters(), *layers.named_buffers()]}
    assert sorted(ptrs.values()) == sorted(pins)  # each layer tensor pinned once, up front
    got = pp.prune(model, calib_ids, "sparsegpt", 0.5, layer_io=io, activation_device=io.activation_device)
    assert {n: t.data_ptr() for n, t in [*layers.named_parameters(), *layers.named_buffers()]} == ptrs
    assert len(pins) == len(ptrs)  # nothing pinned again
    want = dict(pp.model.find_layers(ref_model)[1].named_parameters())
    assert all(torch.equal(t, want[n]) for n, t in layers.named_parameters())  # the pruned values, written back
    assert all(torch.equal(got.masks[k], ref.masks[k]) for k in ref.masks) and all(torch.equal(got.weights[k], ref.weights[k])
                                                                 for k in ref.weights)


def test_onloading_goes_on_unpinned_when_pinning_fails(tiny, calib_ids, monkeypatch):
    calls = []

    def pin_memory(self):
        calls.append(1)
        if len(calls) > 9:  # layer 0 has 9 tensors (7 Linears, 2 norms): layer 1 fails
            raise RuntimeError("CUDA error: out of memory")
        return self.clone()
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    ref = pp.prune(tiny("llama"), calib_ids, "wanda", 0.5)
    model = tiny("llama")
    io = Onloader(model, "cpu", pin=True)
    assert sorted(io.pinned) == [0]
    got = pp.prune(model, calib_ids, "wanda", 0.5, layer_io=io)
    assert all(torch.equal(got.masks[k], ref.masks[k]) for k in ref.masks)


def test_cpu_onloading_pins_nothing(tiny, calib_ids, monkeypatch):
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pytest.fail("pinned on a CPU-only run"))
    io = Onloader(tiny("llama"), "cpu")
    assert io.pin is False and io.pinned == {}


def test_cuda_without_a_gpu_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is visible; use --device cpu"):
        check_device("cuda")
    assert check_device(None) == torch.device("cpu") and check_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device"):
        check_device("gpu0")


def test_loading_for_cuda_without_a_gpu_is_one_clear_error(tiny_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is visible; use --device cpu"):
        pp.load_model(str(tiny_dir("llama")), device="cuda")  # the evaluation load path
    model, _ = pp.load_model(str(tiny_dir("llama")), device=None)
    assert next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype == torch.float32


def test_bf16_without_support_suggests_fp16_or_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(UserError, match="Tesla V100 does not support bfloat16: use --dtype float16 or --dtype float32"):
        check_dtype("bfloat16", torch.device("cuda", 0))
    assert check_dtype(None, torch.device("cuda", 0)) == torch.float16  # the GPU default falls back
    assert check_dtype(None, torch.device("cpu")) == torch.float32
    assert check_dtype("float32", torch.device("cuda", 0)) == torch.float32


def test_gpu_too_small_for_one_layer_says_how_much_is_needed(tiny, monkeypatch):
    import polyprune.onload as onload
    model = tiny("llama")
    monkeypatch.setattr(onload, "free_bytes", lambda device: 1000)
    pl = onload.plan(model, 96, frozenset({"hessian"}), 1000)
    assert pl.layer == sum(p.numel() * 4 for p in pp.model.find_layers(model)[1][0].parameters())
    assert pl.stats >= 4 * (4 * 32 * 32 + 3 * 32 * 32 + 64 * 64)  # q,k,v,o,gate,up (d = 32) and down (64) Hessians
    assert pl.hidden == 96 * 32 * 4
    with pytest.raises(UserError, match=r"cuda:0 has 0\.0 GiB free but pruning needs at least .* GiB for one "
                                        r"decoder layer"):
        place(model, torch.device("cuda", 0), 96, frozenset({"hessian"}))
    assert all(p.device.type == "cpu" for p in model.parameters())  # nothing moved


def test_cli_device_cuda_without_gpu_exits_2(tiny_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    r = forked.polyprune("prune", "--model", str(tiny_dir("llama")), "--method", "magnitude", "--device", "cuda",
                         "--out", str(tmp_path / "r"))
    assert r.returncode == 2, r.stderr
    assert "no CUDA device is visible; use --device cpu" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# data-parallel calibration

WORKER = textwrap.dedent("""
    import sys, torch, polyprune as pp
    from polyprune import distributed
    from polyprune.testing import tiny_model
    assert distributed.init_from_env(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 384, (6, 24), generator=g)
    out = {}
    for method, pattern, refine in [("wanda", "unstructured", None), ("sparsegpt", "unstructured", None),
                                    ("wanda", "2:4", "dsnot"), ("lang-wanda", "unstructured", None)]:
        cal = [{"input_ids": r, "langs": ["fra" if i % 3 else "deu"]} for i, r in enumerate(ids)]
        masks = pp.prune(tiny_model("llama"), cal, method, 0.5, pattern, refine=refine)
        out[f"{method}/{pattern}/{refine}"] = (dict(masks.masks), dict(masks.weights))
    if distributed.rank() == 0:
        torch.save(out, sys.argv[1])
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, args, n, tmp_path, rank_args=None, env_extra=None):
    """``n`` ranks of ``python script args`` (plus ``rank_args[r]`` on rank r) as torchrun starts them
    (its environment variables), each its own process (tests/forked.py)."""
    port = _free_port()
    procs = []
    for r in range(n):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "POLYPRUNE_PROGRESS": "0", **(env_extra or {})}
        extra = (rank_args or {}).get(r, [])
        procs.append(forked.Popen([*script, *args, *extra], env=env, cwd=tmp_path))
    return [(p.wait(timeout=600), *p.communicate()) for p in procs]


def test_two_gloo_processes_equal_one_process(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    results = _launch(["worker.py"], [str(tmp_path / "dist.pt")], 2, tmp_path)
    assert all(rc == 0 for rc, _, _ in results), results[0][2][-2000:]
    dist_out = torch.load(tmp_path / "dist.pt")
    from polyprune.testing import tiny_model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 384, (6, 24), generator=g)
    for key, (masks, weights) in dist_out.items():
        method, pattern, refine = key.split("/")
        cal = [{"input_ids": r, "langs": ["fra" if i % 3 else "deu"]} for i, r in enumerate(ids)]
        ref = pp.prune(tiny_model("llama"), cal, method, 0.5, pattern, refine=None if refine == "None" else refine)
        assert set(masks) == set(ref.masks)
        agree = _agreement(masks, ref.masks)
        if method == "sparsegpt":  # H summed in another order; measured: equal masks, |ΔW| ≤ 6.2e-7
            assert agree >= 0.999, key
            assert all(torch.allclose(weights[k], ref.weights[k], rtol=1e-4, atol=1e-5) for k in ref.weights), key
        else:  # Wanda-family scores: equal masks
            assert agree == 1.0, key


def test_torchrun_cli_run_equals_single_process_run(tmp_path, tiny_dir):
    text = _write(tmp_path / "c.txt", "Le renard brun rapide saute par-dessus le chien paresseux. " * 40)
    args = ["--model", str(tiny_dir("llama")), "--calibration-file", str(tmp_path / "c.txt"), "--nsamples", "4",
            "--seqlen", "16"]
    results = _launch(["-m", "polyprune", "prune"], [*args, "--out", str(tmp_path / "two")], 2, text)
    assert all(rc == 0 for rc, _, _ in results), results[0][2][-2000:]
    assert "achieved sparsity" in results[0][1] and "achieved sparsity" not in results[1][1]  # rank 0 reports
    one = forked.polyprune("prune", *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = pp.load_masks(tmp_path / "two"), pp.load_masks(tmp_path / "one")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)
    rec = json.loads((tmp_path / "two" / "record.json").read_text())
    assert rec["calibration"]["samples"] == 4  # the run's whole calibration, not one rank's share


def _two_rank_prune_errors(tmp_path, tiny_dir, nsamples: int) -> list[str]:
    """stderr of each of 2 gloo ranks of a CLI prune into ``tmp_path/r``; each must exit 2 with one line."""
    results = _launch(["-m", "polyprune", "prune"], ["--model", str(tiny_dir("llama")), "--calibration-file",
                                                     str(tmp_path / "c.txt"), "--nsamples", str(nsamples),
                                                     "--seqlen", "8", "--out", str(tmp_path / "r")], 2,
                      _write(tmp_path / "c.txt", "Le renard brun rapide saute par-dessus le chien paresseux. " * 20))
    for rc, _, err in results:
        assert rc == 2, err[-2000:]
        assert len(err.strip().splitlines()) == 1, err[-2000:]
    return [err for _, _, err in results]


def test_more_ranks_than_samples_is_one_clear_error(tmp_path, tiny_dir):
    for err in _two_rank_prune_errors(tmp_path, tiny_dir, nsamples=1):
        assert "2 ranks but calibration set 'target' has only 1 sample(s)" in err
    assert not (tmp_path / "r").exists()


def test_existing_out_stops_every_rank(tmp_path, tiny_dir):
    """Rank 0 refuses an existing --out; the other ranks refuse it too instead of waiting for rank 0."""
    (tmp_path / "r").mkdir()
    for err in _two_rank_prune_errors(tmp_path, tiny_dir, nsamples=4):
        assert "already exists" in err
    assert list((tmp_path / "r").iterdir()) == []


def _write(path, text):
    path.write_text(text)
    return path.parent


def test_distributed_init_failure_is_one_clear_error(tiny_dir, tmp_path):
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "not-a-port", "POLYPRUNE_PROGRESS": "0"}
    r = forked.run(["-m", "polyprune", "prune", "--model", str(tiny_dir("llama")), "--method", "magnitude", "--out",
                    str(tmp_path / "r")], env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "torch.distributed (gloo) initialisation failed" in r.stderr and "torchrun" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# a failure on one rank stops every rank (distributed.all_or_none at the phase boundaries)

FAILING_WRITE = textwrap.dedent("""
    import errno, os, sys
    from polyprune import pipeline
    if os.environ["RANK"] == "0":  # rank 0's disk fills up while it writes the run folder
        def finish(self, *a, **k):
            (self.folder / "masks.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / "masks.safetensors"))
        pipeline.RunWriter.finish = finish
    from polyprune.cli import main
    main(sys.argv[1:])
""")


def _prune_args(tmp_path, tiny_dir):
    _write(tmp_path / "c.txt", "Le renard brun rapide saute par-dessus le chien paresseux. " * 20)
    return ["--model", str(tiny_dir("llama")), "--calibration-file", str(tmp_path / "c.txt"), "--nsamples", "4",
            "--seqlen", "8", "--out", str(tmp_path / "r")]


def test_bad_calibration_on_one_rank_stops_every_rank_with_its_line(tmp_path, tiny_dir):
    """Rank 1 cannot read its calibration file (e.g. not on its node): rank 0 does not go on to wait
    for it in the first collective, both exit 2 with rank 1's line and nothing is written."""
    missing = tmp_path / "not-here.txt"
    results = _launch(["-m", "polyprune", "prune"], _prune_args(tmp_path, tiny_dir), 2, tmp_path,
                      rank_args={1: ["--calibration-file", str(missing)]}, env_extra={"POLYPRUNE_DIST_TIMEOUT_S": "120"})
    lines = []
    for rc, _, err in results:
        assert rc == 2, err[-2000:]
        assert len(err.strip().splitlines()) == 1, err[-2000:]
        lines.append(err.strip())
    assert lines[0] == lines[1] and "not-here.txt" in lines[0]
    assert not (tmp_path / "r").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]


def test_write_failure_on_rank_0_fails_every_rank(tmp_path, tiny_dir):
    """Rank 0 fails while writing: the other ranks must not report success for a run that is not there."""
    (tmp_path / "w.py").write_text(FAILING_WRITE)
    results = _launch(["w.py", "prune"], _prune_args(tmp_path, tiny_dir), 2, tmp_path,
                      env_extra={"POLYPRUNE_DIST_TIMEOUT_S": "120"})
    (rc0, _, err0), (rc1, _, err1) = results
    assert rc0 == 2 and "No space left on device" in err0, err0[-2000:]
    assert rc1 == 2, err1[-2000:]
    assert err1.strip().splitlines() == ["error: rank 0 failed: " + err0.strip().removeprefix("error: ")]
    assert not (tmp_path / "r").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]


FAILING_LAYER = textwrap.dedent("""
    import os, sys
    from polyprune import collect, engine
    from polyprune.errors import UserError
    where = sys.argv.pop(1)
    if os.environ["RANK"] == "1" and where == "mid-walk":  # rank 1 runs out of memory after layer 0
        def propagate(*a, **k):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        collect.propagate = propagate
    if os.environ["RANK"] == "1" and where == "last-layer":  # rank 1 fails on the last matrix it prunes
        real, calls = engine.prune_matrix, []
        def prune_matrix(*a, **k):
            calls.append(1)
            if len(calls) == 14:  # 2 layers x 7 matrices of the tiny llama
                raise UserError("the last matrix failed on rank 1")
            return real(*a, **k)
        engine.prune_matrix = prune_matrix
    from polyprune.cli import main
    main(sys.argv[1:])
""")


@pytest.mark.parametrize("where", ["mid-walk", "last-layer"])
def test_failure_inside_the_layer_walk_on_one_rank_stops_every_rank_at_once(tmp_path, tiny_dir, where):
    """Rank 1 fails while the other rank is at its next exchange (the next layer's statistics, or the
    end of the pruning phase): rank 0 stops there with rank 1's line, long before the timeout."""
    (tmp_path / "f.py").write_text(FAILING_LAYER)
    t0 = time.time()
    (rc0, _, err0), (rc1, _, err1) = _launch(["f.py", where, "prune"], _prune_args(tmp_path, tiny_dir), 2, tmp_path,
                                             env_extra={"POLYPRUNE_DIST_TIMEOUT_S": "300"})
    assert time.time() - t0 < 120  # not the 300 s timeout
    if where == "mid-walk":  # not bad input: rank 1 keeps its traceback, rank 0 names it
        assert rc1 == 1 and err1.strip().splitlines()[-1] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
        assert rc0 == 2 and err0.strip().splitlines() == [
            "error: rank 1 failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"], err0[-2000:]
    else:
        assert rc0 == rc1 == 2, (err0[-2000:], err1[-2000:])
        assert err0.strip().splitlines() == err1.strip().splitlines() == ["error: the last matrix failed on rank 1"]
    assert not (tmp_path / "r").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]


def test_distributed_timeout_comes_from_the_environment(monkeypatch):
    from polyprune import distributed
    monkeypatch.delenv("POLYPRUNE_DIST_TIMEOUT_S", raising=False)
    assert distributed.timeout_s() == 600.0
    monkeypatch.setenv("POLYPRUNE_DIST_TIMEOUT_S", "90")
    assert distributed.timeout_s() == 90.0
    for bad in ("soon", "0", "-5", "inf"):
        monkeypatch.setenv("POLYPRUNE_DIST_TIMEOUT_S", bad)
        with pytest.raises(UserError, match=r"POLYPRUNE_DIST_TIMEOUT_S=.* is not a positive number of seconds"):
            distributed.timeout_s()


def test_single_process_phases_only_pass_errors_through():
    from polyprune import distributed
    with distributed.all_or_none():
        pass
    with pytest.raises(UserError, match="bad input") as e:
        with distributed.all_or_none():
            raise UserError("bad input")
    assert type(e.value) is UserError  # not turned into an agreed error outside torchrun


def test_offload_under_torchrun_is_one_clear_error(tmp_path, tiny_dir):
    results = _launch(["-m", "polyprune", "prune"], ["--model", str(tiny_dir("llama")), "--method", "magnitude",
                                                     "--offload", "--out", str(tmp_path / "r")], 2, tmp_path)
    for rc, _, err in results:
        assert rc == 2 and "streaming (--offload / --max-memory) runs in one process" in err, err[-2000:]
    assert not (tmp_path / "r").exists()
