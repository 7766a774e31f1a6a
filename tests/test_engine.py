"""The layer walker and pp.prune on tiny random models of every supported family."""
import copy

import pytest
import torch

import polyprune as pp
from polyprune.collect import capture, run_layer
from polyprune.masks import is_conv1d
from polyprune.model import find_layers, prunable_weights
from polyprune.testing import FAMILIES


def matrix(mask, module):
    return mask.t() if is_conv1d(module) else mask


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_layer_calls_reproduce_the_models_forward(family, tiny, calib_ids):
    """Per-layer kwargs (masks, rotary tables, alibi …) replayed layer by layer give the model's own
    hidden states — including Gemma-3's alternating sliding/global layers."""
    model = tiny(family)
    cal = pp.Calibration([pp.Sample(r) for r in calib_ids])
    with torch.no_grad():
        ref = model(calib_ids, output_hidden_states=True).hidden_states
    _, layers = find_layers(model)
    [entry] = capture(model, cal, layers=layers)  # equal lengths: one batch
    assert len(entry.samples) == len(calib_ids)
    assert torch.allclose(entry.hidden, ref[0], atol=1e-5)
    with torch.no_grad():
        for i in range(len(layers) - 1):
            entry.hidden = run_layer(layers[i], entry, i)
            assert torch.allclose(entry.hidden, ref[i + 1], atol=1e-4), f"layer {i}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_family_end_to_end(family, method, tiny, calib_ids):
    model = tiny(family)
    targets = prunable_weights(model)
    res = pp.prune(model, calib_ids, method=method, sparsity=0.5)
    masks = res.masks
    params = dict(model.named_parameters())
    assert set(masks) == set(targets)
    assert not any("embed" in k or "wte" in k or "lm_head" in k for k in masks)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == params[name].shape
        assert (params[name][~mask] == 0).all()
        if method == "wanda":  # exactly int(in·s) per output row
            m = matrix(mask, targets[name])
            assert ((~m).sum(1) == int(m.shape[1] * 0.5)).all()
    assert 0.49 < res.record["achieved_sparsity"] < 0.52
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids).logits).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_nm_on_every_row(family, tiny, calib_ids):
    model = tiny(family)
    targets = prunable_weights(model)
    masks = pp.prune(model, calib_ids, method="wanda", pattern="2:4").masks
    for name, mask in masks.items():
        m = matrix(mask, targets[name])
        assert ((~m).reshape(m.shape[0], -1, 4).sum(-1) == 2).all()


def locuslab_wanda(model, ids, sparsity):
    """An independent, straightforward transcription of locuslab/wanda's prune_wanda for Llama."""
    layers = model.model.layers
    cache = {}

    class Catcher(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x, **kwargs):
            cache.setdefault("inps", []).append(x)
            cache["kw"] = kwargs
            raise ValueError

    layers[0] = Catcher(layers[0])
    for row in ids:
        try:
            model(row.unsqueeze(0), use_cache=False)
        except ValueError:
            pass
    layers[0] = layers[0].module
    inps, kw = cache["inps"], cache["kw"]
    masks = {}
    for i, layer in enumerate(layers):
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        scaler = {n: torch.zeros(m.in_features) for n, m in subset.items()}
        count = {n: 0 for n in subset}

        def hook(name):
            def f(m, inp, out):
                x = inp[0].reshape(-1, inp[0].shape[-1]).t().float()
                scaler[name] *= count[name] / (count[name] + 1)
                count[name] += 1
                scaler[name] += torch.norm(x, p=2, dim=1) ** 2 / count[name]
            return f
        hs = [m.register_forward_hook(hook(n)) for n, m in subset.items()]
        for x in inps:
            layer(x, **kw)
        for h in hs:
            h.remove()
        for n, m in subset.items():
            metric = m.weight.data.abs() * torch.sqrt(scaler[n].reshape(1, -1))
            idx = torch.sort(metric, dim=-1, stable=True)[1][:, :int(metric.shape[1] * sparsity)]
            pruned = torch.zeros_like(metric, dtype=torch.bool).scatter_(1, idx, True)
            m.weight.data[pruned] = 0
            masks[f"model.layers.{i}.{n}.weight"] = ~pruned
        inps = [layer(x, **kw) for x in inps]
        inps = [o[0] if isinstance(o, tuple) else o for o in inps]
    return masks


def test_wanda_equals_reference_on_llama(tiny, calib_ids):
    model = tiny("llama")
    ref_model = copy.deepcopy(model)
    ours = pp.prune(model, calib_ids, method="wanda", sparsity=0.5).masks
    with torch.no_grad():
        ref = locuslab_wanda(ref_model, calib_ids, 0.5)
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_same_seed_gives_byte_identical_masks(tiny, calib_ids, tmp_path):
    for run in ("a", "b"):
        masks = pp.prune(tiny("qwen2"), calib_ids, method="sparsegpt", sparsity=0.6).masks
        pp.save_masks(masks, tmp_path / f"{run}.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = pp.load_masks(tmp_path / "a.safetensors")
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pads_never_enter_statistics(side, tiny, calib_ids):
    clean = [{"input_ids": calib_ids[i, : 10 + 4 * i]} for i in range(3)]
    padded = []
    for i in range(3):
        ids = calib_ids[i, : 10 + 4 * i]
        pad = 24 - ids.numel()
        z, o = torch.zeros(pad, dtype=torch.long), torch.ones(ids.numel(), dtype=torch.long)
        pads = torch.full((pad,), 3)
        if side == "right":
            padded.append({"input_ids": torch.cat([ids, pads]), "attention_mask": torch.cat([o, z])})
        else:
            padded.append({"input_ids": torch.cat([pads, ids]), "attention_mask": torch.cat([z, o])})
    a = pp.prune(tiny("llama"), clean, method="wanda", sparsity=0.5, keep_stats=True)
    b = pp.prune(tiny("llama"), padded, method="wanda", sparsity=0.5, keep_stats=True)
    c = pp.prune(tiny("llama"), padded, method="wanda", sparsity=0.5, keep_stats=True, count_pads=True)
    k = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(a.stats[k]["target"]["scaler_row"], b.stats[k]["target"]["scaler_row"], atol=1e-5)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert not torch.allclose(a.stats[k]["target"]["scaler_row"], c.stats[k]["target"]["scaler_row"], atol=1e-3)
    assert b.record["calibration"]["tokens"] == sum(10 + 4 * i for i in range(3))


def test_keep_dense_layers_and_sequential_modes(tiny, calib_ids):
    m = tiny("llama")
    masks = pp.prune(m, calib_ids, method="wanda", sparsity=0.5, keep_dense_layers="-1").masks
    assert all(".layers.0." in k for k in masks)
    seq = pp.prune(tiny("llama"), calib_ids, method="wanda", sparsity=0.5, keep_stats=True)
    non = pp.prune(tiny("llama"), calib_ids, method="wanda", sparsity=0.5, keep_stats=True, sequential=False)
    k0, k1 = "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(seq.stats[k0]["target"]["scaler_row"], non.stats[k0]["target"]["scaler_row"])
    assert not torch.allclose(seq.stats[k1]["target"]["scaler_row"], non.stats[k1]["target"]["scaler_row"])
    # non-sequential statistics are those of the dense model
    dense = pp.prune(tiny("llama"), calib_ids, method="wanda", sparsity=0.5, keep_stats=True,
                     keep_dense_layers=[0])
    assert torch.allclose(dense.stats[k1]["target"]["scaler_row"], non.stats[k1]["target"]["scaler_row"])


def test_apply_masks_reproduces_pruned_weights(tiny, calib_ids):
    pruned = tiny("opt")
    masks = pp.prune(pruned, calib_ids, method="wanda", sparsity=0.5)
    fresh = tiny("opt")
    zeroed = pp.apply_masks(fresh, masks.masks)
    assert zeroed == masks.record["pruned_weights"]
    for (n, a), (_, b) in zip(pruned.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), n


def test_unequal_lengths_and_calibration_forms(tiny, calib_ids):
    as_tensor = pp.prune(tiny("llama"), calib_ids, method="wanda", sparsity=0.5).masks
    as_dicts = pp.prune(tiny("llama"), [{"input_ids": r} for r in calib_ids], method="wanda", sparsity=0.5).masks
    assert all(torch.equal(as_tensor[k], as_dicts[k]) for k in as_tensor)
    ragged = [calib_ids[0, :5], calib_ids[1], calib_ids[2, :17]]
    masks = pp.prune(tiny("bloom"), ragged, method="sparsegpt", sparsity=0.5)
    assert masks.record["calibration"]["tokens"] == 5 + 24 + 17


def test_statistics_pass_stops_after_the_last_module_input(tiny, calib_ids):
    """Sequential Wanda: the statistics forward stops once down_proj's input is recorded (its matmul
    is never run there), so down_proj runs once per batch and layer (the propagation), minus the
    last layer (nothing to feed); the non-sequential walk keeps the dense outputs and runs it once."""
    calls = {}  # the 4 samples have one length: one batched call per layer and pass
    for sequential, expected in ((True, 1), (False, 2)):
        model = tiny("llama")
        n_layers = len(find_layers(model)[1])
        assert n_layers == 2
        calls.clear()
        for i, layer in enumerate(find_layers(model)[1]):
            layer.mlp.down_proj.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
        pp.prune(model, calib_ids, "wanda", 0.5, sequential=sequential)
        assert sum(calls.values()) == expected, (sequential, calls)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_inputs_accumulate_once_with_the_same_statistics(family, tiny, calib_ids):
    """Modules fed the same tensor (q/k/v, gate/up) share one accumulation: every module's statistics
    equal those of an independent hook on it, bit for bit, and each module owns its copy."""
    from polyprune.calibration import as_calibration
    from polyprune.collect import collect_layer_stats
    from polyprune.model import prunable_modules
    from polyprune.stats import ModuleStats
    model = tiny(family)
    entries = capture(model, as_calibration(calib_ids))
    layer = find_layers(model)[1][0]
    kinds = frozenset({"sqnorm", "hessian", "moments"})
    own, handles = {}, []
    for name, mod in prunable_modules(layer).items():
        cols = mod.weight.shape[0] if is_conv1d(mod) else mod.in_features
        own[name] = ModuleStats(cols, kinds)
        def each_sample(m, a, _n=name):  # as the references: one sample per call ([B·L, d] in OPT's MLP)
            x = a[0]
            for part in (x.unbind(0) if x.dim() == 3 else x.split(x.shape[0] // len(calib_ids))):
                own[_n].add(part, batch=1)
        handles.append(mod.register_forward_pre_hook(each_sample))
    with torch.no_grad():
        for e in entries:
            run_layer(layer, e, 0)
    for h in handles:
        h.remove()
    adds = []
    orig = ModuleStats.add
    ModuleStats.add = lambda self, *a, **k: (adds.append(1), orig(self, *a, **k))[1]
    try:
        stats = collect_layer_stats(layer, entries, 0, kinds, None, keep_outputs=False)
    finally:
        ModuleStats.add = orig
    distinct = {id(s.target) for s in stats.values()}
    assert len(distinct) == len(stats)
    for name, ref in own.items():
        got = stats[name].target
        assert torch.equal(got.scaler_row, ref.scaler_row) and torch.equal(got.H, ref.H), name
        assert torch.equal(got.mean, ref.mean) and got.nsamples == ref.nsamples, name
    # k,v after q; up after gate; Cohere's parallel MLP reads the attention's input; fused qkv: none
    shared = {"llama": 3, "gemma3": 3, "qwen2": 3, "cohere": 4, "xglm": 2, "bloom": 0, "gpt2": 0, "opt": 2}[family]
    assert len(adds) == len(calib_ids) * (len(stats) - shared), (family, len(adds))


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_samples_give_the_statistics_and_masks_of_one_at_a_time(family, tiny, calib_ids, monkeypatch):
    """Samples of one length run as one batch; statistics are still added one sample at a time, so
    masks and statistics are bit-identical to one sample per call (the references' loop)."""
    from polyprune import collect
    ragged = [{"input_ids": r[:n]} for r, n in zip(calib_ids, (24, 24, 16, 24))]  # batches: 2, 1, 1
    assert [len(e.samples) for e in capture(tiny(family), pp.Calibration(
        [pp.Sample(r["input_ids"]) for r in ragged]))] == [2, 1, 1]
    runs = []
    for budget in (None, 1):
        monkeypatch.setattr(collect, "BATCH_TOKENS", budget or 4096)
        runs.append(pp.prune(tiny(family), ragged, method="sparsegpt" if family == "opt" else "wanda",
                             sparsity=0.5, keep_stats=True))
    batched, single = runs
    assert set(batched.masks) == set(single.masks)
    for name in single.masks:
        assert torch.equal(batched.masks[name], single.masks[name]), name
        for k, v in single.stats[name]["target"].items():
            assert torch.equal(batched.stats[name]["target"][k], v), (name, k)
