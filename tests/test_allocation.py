"""Layer-wise allocations: OWL's outlier ratio and band, the N:M variant, clamping, language correlation."""
import pytest
import torch

import polyprune as pp
from polyprune.allocation import (band_allocation, band_allocation_nm, clamp_redistribute, get_allocation,
                                  outlier_ratio, owl_outlier_ratios, pearson_divergence)
from polyprune.errors import UserError
from polyprune.masks import Pattern, weight_matrix
from polyprune.model import prunable_weights


def test_outlier_ratio_hand():
    a = torch.tensor([1.0] * 9 + [20.0])  # mean 2.9, threshold 5·2.9 = 14.5: one outlier in 10
    assert outlier_ratio(a, 5) == pytest.approx(10.0)
    assert outlier_ratio(a, 7) == 0.0  # 20.3 > 20
    assert outlier_ratio(torch.tensor([[1.0, 3.0], [0.0, 0.0]]), 1) == pytest.approx(25.0)  # > 1·mean(=1): only 3


def test_band_hand_and_average():
    s = band_allocation([0.0, 5.0, 10.0], 0.5, 0.08)  # r = [0, .08, .16], mean .08
    assert s == pytest.approx([0.58, 0.50, 0.42])
    assert sum(s) / 3 == pytest.approx(0.5, abs=1e-12)
    # more outliers -> lower sparsity; all inside S ± 2λ
    assert all(0.5 - 0.16 - 1e-12 <= x <= 0.5 + 0.16 + 1e-12 for x in s)


def test_band_weighted_by_parameters():
    s = band_allocation([0.0, 10.0], 0.5, 0.1, weights=[1, 3])  # r = [0, .2], weighted mean .15
    assert s == pytest.approx([0.65, 0.45])
    assert (s[0] * 1 + s[1] * 3) / 4 == pytest.approx(0.5, abs=1e-12)


def test_band_random_average_is_exact():
    g = torch.Generator().manual_seed(1)
    d = (torch.rand(18, generator=g) * 7).tolist()
    w = torch.randint(1, 100, (18,), generator=g).tolist()
    for S in (0.3, 0.5, 0.7):
        s = torch.tensor(band_allocation(d, S, 0.08, w), dtype=torch.float64)
        wt = torch.tensor(w, dtype=torch.float64)
        assert float((s * wt).sum() / wt.sum()) == pytest.approx(S, abs=1e-12)
        assert float(s.max() - s.min()) == pytest.approx(0.16, abs=1e-12)  # the band is 2λ wide
        assert float(s.max()) <= S + 0.16 and float(s.min()) >= S - 0.16


def test_band_equal_outliers_is_uniform():
    assert band_allocation([3.0, 3.0, 3.0], 0.7, 0.08) == pytest.approx([0.7, 0.7, 0.7])


def test_band_outside_unit_interval_is_an_error():
    with pytest.raises(UserError, match="outside"):
        band_allocation([0.0, 1.0], 0.05, 0.08)  # -> [0.13, -0.03]
    with pytest.raises(UserError, match="outside"):
        band_allocation([0.0, 1.0], 0.96, 0.04)  # -> [1.0, 0.92]


def test_clamp_keeps_average():
    s = band_allocation([0.0, 1.0], 0.975, 0.02)  # raw [0.995, 0.955] -> 0.99, excess to the other
    assert s == pytest.approx([0.99, 0.96])
    t = clamp_redistribute(torch.tensor([0.995, 0.5, 0.5]), torch.tensor([1.0, 1.0, 2.0]))
    assert t.tolist() == pytest.approx([0.99, 0.5 + 0.005 / 3, 0.5 + 0.005 / 3])
    with pytest.raises(UserError, match="lower the sparsity"):
        clamp_redistribute(torch.tensor([0.995, 0.995]), torch.ones(2))


def test_nm_variant_hand():
    assert band_allocation_nm([0.0, 5.0, 10.0], Pattern(2, 4), 2.0) == [3, 2, 1]  # r - mean = [-1, 0, 1]
    assert band_allocation_nm([0.0, 5.0, 10.0], Pattern(2, 4), 1.0) == [2, 2, 2]  # ±0.5 rounds to even (0)
    with pytest.raises(UserError, match="outside"):
        band_allocation_nm([0.0, 10.0], Pattern(1, 2), 4.0)  # N = [3, -1]


def test_pearson_divergence_hand():
    a, b, c = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0]), torch.tensor([3.0, 2.0, 1.0])
    assert pearson_divergence({"x": a, "y": b}) == pytest.approx(0.0, abs=1e-12)
    assert pearson_divergence({"x": a, "z": c}) == pytest.approx(2.0)
    assert pearson_divergence({"x": a, "y": b, "z": c}) == pytest.approx(1 + 1 / 3)  # mean(1, -1, -1) = -1/3
    with pytest.raises(UserError, match="two languages"):
        pearson_divergence({"x": a})


def _weighted_mean(targets, model):
    from polyprune.model import find_layers, prunable_modules
    _, layers = find_layers(model)
    w = [sum(m.weight.numel() for m in prunable_modules(layer).values()) for layer in layers]
    return sum(t * x for t, x in zip(targets, w)) / sum(w)


def test_owl_end_to_end(tiny, calib_ids):
    model = tiny("llama")
    before = {k: weight_matrix(m).clone() for k, m in prunable_weights(model).items()}
    d, params = owl_outlier_ratios(model, calib_ids, m=3.0)
    assert len(d) == 2 and all(0 <= x <= 100 for x in d) and len(set(d)) > 1
    assert all(torch.equal(before[k], weight_matrix(m)) for k, m in prunable_weights(model).items())  # pass 1
    masks = pp.prune(model, calib_ids, "wanda", 0.6, allocation="owl", allocation_options={"m": 3.0, "lam": 0.1})
    t = masks.record["layer_sparsity"]
    assert _weighted_mean(t, model) == pytest.approx(0.6, abs=1e-12)
    expected = band_allocation(d, 0.6, 0.1, params)
    assert t == pytest.approx(expected)
    assert max(t) - min(t) == pytest.approx(0.2)
    for name, mask in masks.masks.items():  # wanda: int(cols·s_l) pruned per row in layer l
        layer = int(name.split(".")[2])
        cols = mask.shape[1]
        assert ((~mask).sum(1) == int(cols * t[layer])).all()


def test_owl_with_data_free_method_and_nm(tiny, calib_ids):
    model = tiny("llama")
    masks = pp.prune(model, calib_ids, "magnitude", pattern="2:4", allocation="owl", allocation_options={"m": 3.0})
    pats = masks.record["layer_patterns"]
    d, _ = owl_outlier_ratios(tiny("llama"), calib_ids, m=3.0)
    assert pats == [f"{n}:4" for n in band_allocation_nm(d, Pattern(2, 4), 2.0)]
    assert pats != ["2:4", "2:4"]  # two layers: the one with more outliers is pruned less
    for name, mask in masks.masks.items():
        n = int(pats[int(name.split(".")[2])].split(":")[0])
        assert ((~mask).reshape(mask.shape[0], -1, 4).sum(-1) == n).all()


def test_lang_corr_allocation(tiny, calib_ids):
    cal = [{"input_ids": row, "langs": ["eng_Latn" if i % 2 else "fra_Latn"]} for i, row in enumerate(calib_ids)]
    masks = pp.prune(tiny("llama"), cal, "wanda", 0.5, allocation="lang-corr", allocation_options={"lam": 0.05})
    t = masks.record["layer_sparsity"]
    assert sorted(t) == pytest.approx([0.45, 0.55])
    with pytest.raises(UserError, match="two languages"):
        pp.prune(tiny("llama"), calib_ids, "wanda", 0.5, allocation="lang-corr")


def test_allocation_bad_input(tiny, calib_ids):
    with pytest.raises(UserError, match="unknown allocation"):
        get_allocation("nope")
    with pytest.raises(UserError, match="no option 'M'"):
        pp.prune(tiny("llama"), calib_ids, "wanda", 0.5, allocation="owl", allocation_options={"M": 5})
    with pytest.raises(UserError, match="needs calibration"):
        pp.prune(tiny("llama"), None, "magnitude", 0.5, allocation="owl")
