"""The engine's result, its per-matrix step, and the one run-folder writer on both paths."""
import json

import pytest
import torch

import polyprune as pp
from polyprune.masks import Pattern
from polyprune.methods import Spec, get_method
from polyprune.model import prunable_weights
from polyprune.result import PruneResult, prune_matrix


def test_the_module_is_not_shadowed_by_the_function():
    import polyprune.engine as engine
    import polyprune
    assert isinstance(engine, type(polyprune)) and engine.prune is polyprune.prune
    assert callable(polyprune.prune) and not isinstance(polyprune.prune, type(polyprune))


def test_result_of_a_mask_only_method(tiny, calib_ids):
    model = tiny("llama")
    res = pp.prune(model, calib_ids, "wanda", 0.5)
    assert isinstance(res, PruneResult)
    assert set(res.masks) == set(prunable_weights(model)) and len(res.masks) == 14
    assert all(m.dtype == torch.bool and m.device.type == "cpu" for m in res.masks.values())
    assert res.weights == {} and res.stats == {} and res.permutations == {} and res.info == {}
    pruned = sum(int((~m).sum()) for m in res.masks.values())
    assert res.record["pruned_weights"] == pruned and res.record["prunable_weights"] == 2 * pruned
    assert res.record["achieved_sparsity"] == 0.5
    params = dict(model.named_parameters())
    assert all(bool((params[k][~m] == 0).all()) for k, m in res.masks.items())


def test_result_of_a_weight_updating_method(tiny, calib_ids):
    model = tiny("llama")
    res = pp.prune(model, calib_ids, "sparsegpt", 0.5, keep_stats=True)
    params = dict(model.named_parameters())
    assert set(res.weights) == set(res.masks) == set(prunable_weights(model))
    for k, w in res.weights.items():
        assert w.dtype == params[k].dtype and w.device.type == "cpu"
        assert torch.equal(w, params[k].detach())  # the model holds exactly the returned values
        assert bool((w[~res.masks[k]] == 0).all())
    assert set(res.stats) == set(res.masks)
    assert {t.dtype for d in res.stats.values() for s in d.values() for t in s.values()} == {torch.float32}


def test_method_options_and_engine_keywords_do_not_collide(tiny, calib_ids):
    default = pp.prune(tiny("llama"), calib_ids, "sparsegpt", 0.5)
    small = pp.prune(tiny("llama"), calib_ids, "sparsegpt", 0.5, method_options={"blocksize": 2})
    both = pp.prune(tiny("llama"), calib_ids, "sparsegpt", 0.5, method_options={"blocksize": 2}, batch_tokens=1)
    # the option reaches the method (masks chosen per block of 2 columns, not 128) …
    assert any(not torch.equal(small.masks[k], default.masks[k]) for k in default.masks)
    # … and an engine keyword beside it is the engine's (batching never changes masks)
    assert all(torch.equal(both.masks[k], small.masks[k]) for k in small.masks)
    with pytest.raises(TypeError):
        pp.prune(tiny("llama"), calib_ids, "sparsegpt", 0.5, blocksize=2)  # no longer mixed in
    with pytest.raises(pp.UserError, match="method 'wanda' has no option 'seed'"):
        pp.prune(tiny("llama"), calib_ids, "wanda", 0.5, method_options={"seed": 1})


def test_prune_matrix_by_hand_and_as_the_engine_stores_it(tiny):
    signs = torch.tensor([1.0, -1.0]).repeat(16)
    W = (torch.arange(1, 33, dtype=torch.float32) * signs).reshape(4, 8)
    res = prune_matrix(W, None, Spec(0.5, Pattern(), {}, "w"), get_method("magnitude"))
    # locuslab's rule over the matrix: prune |w| <= the sorted value at int(32 · 0.5) = 17
    assert torch.equal(res.kept, W.abs() > 17) and int((~res.kept).sum()) == 17 and res.weight is None
    model = tiny("llama")
    name = "model.layers.1.mlp.up_proj.weight"
    dense = dict(model.named_parameters())[name].detach().clone()
    stored = pp.prune(model, None, "magnitude", 0.5, seed=3).masks[name]
    assert torch.equal(prune_matrix(dense, None, Spec(0.5, Pattern(), {}, name, 3), get_method("magnitude")).kept,
                       stored)


def _record_without_timings(run):
    rec = json.loads((run / "record.json").read_text())
    return {k: v for k, v in rec.items() if k not in ("timings_s", "memory", "streaming", "finished_at")}, rec


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_in_memory_and_streamed_run_folders_agree(tiny_dir, tmp_path, method):
    from polyprune.config import RunConfig
    from polyprune.pipeline import run_prune
    calfile = tmp_path / "c.txt"
    calfile.write_text("\n".join(["The quick brown fox jumps over the lazy dog. " * 8] * 20))
    runs = {}
    for name, offload in (("mem", False), ("str", True)):
        cfg = RunConfig(model=str(tiny_dir("llama")), method=method, offload=offload,
                        calibration={"file": str(calfile), "nsamples": 4, "seqlen": 16})
        runs[name] = run_prune(cfg, tmp_path / name)
    mem, st = runs["mem"], runs["str"]
    assert (mem / "masks.safetensors").read_bytes() == (st / "masks.safetensors").read_bytes()
    (a, full_a), (b, full_b) = _record_without_timings(mem), _record_without_timings(st)
    assert a == b and 0.5 <= a["achieved_sparsity"] < 0.51  # sparsegpt: the reference threshold prunes ties too
    assert list(full_b) == [k for k in full_a if k != "finished_at"] + ["streaming", "finished_at"]
    assert (mem / "calibration.jsonl").read_bytes() == (st / "calibration.jsonl").read_bytes()
    kept = [pp.load_masks(r) for r in (mem, st)]
    assert all(torch.equal(kept[0][k], kept[1][k]) for k in kept[0])
    if method == "sparsegpt":
        from polyprune.run import load_kept_weights
        wa, wb = load_kept_weights(mem), load_kept_weights(st)
        assert set(wa) == set(wb) == set(kept[0]) and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name for p in st.iterdir()) == sorted([p.name for p in mem.iterdir()] + ["model"])
