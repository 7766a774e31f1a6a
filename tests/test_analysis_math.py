"""Hand-computed cases for the analysis statistics (pure tensor functions)."""
import math

import pytest
import torch

from polyprune.analysis import fidelity, lape, lsar, magnitudes as mg, mask_iou as mi
from polyprune.errors import UserError


# ------------------------------------------------------------------ feature magnitudes
def test_top_bottom_dims_order_and_ties():
    v = torch.tensor([3.0, 9.0, 1.0, 9.0, 0.5])
    assert mg.top_dims(v, 3).tolist() == [1, 3, 0]
    assert mg.bottom_dims(v, 2).tolist() == [4, 2]


def test_overlap_ratio_hand_computed():
    # d = 10, beta = 0.3 -> d_beta = 3
    a = torch.arange(10, dtype=torch.float)          # top-3 of a: {9, 8, 7}
    b = torch.tensor([5., 5, 5, 5, 5, 5, 5, 0, 1, 6])  # bottom-3 of b: {7, 8, 0 (tie, lowest index)}
    assert mg.overlap_ratio(a, b, 0.3) == pytest.approx(2 / 3)
    assert mg.overlap_ratio(a, a, 0.3) == 0.0          # top and bottom of one vector are disjoint
    assert mg.overlap_ratio(a, -a, 0.3) == 1.0         # reversed ranking: top of a == bottom of -a
    with pytest.raises(UserError):
        mg.overlap_ratio(a, b, 0.7)


def test_overlap_matrix_matches_pairwise_and_quadrants():
    g = torch.Generator().manual_seed(0)
    norms = torch.rand(4, 20, generator=g)
    m = mg.overlap_matrix(norms, 0.3)
    for i in range(4):
        for j in range(4):
            assert m[i, j].item() == pytest.approx(mg.overlap_ratio(norms[i], norms[j], 0.3))
    assert torch.all(m.diagonal() == 0)
    q = mg.quadrant_means(torch.tensor([[0., 1, 2], [3, 0, 4], [5, 6, 0]]), [False, False, True])
    assert q["mono→mono"] == pytest.approx(2.0)   # (1 + 3) / 2, diagonal excluded
    assert q["mono→trans"] == pytest.approx(3.0)  # (2 + 4) / 2
    assert q["trans→mono"] == pytest.approx(5.5)  # (5 + 6) / 2
    assert math.isnan(q["trans→trans"])           # only the diagonal


def test_unique_share():
    t = torch.tensor([10., 9, 8, 7, 0, 0])   # top-4: {0, 1, 2, 3}
    m1 = torch.tensor([10., 9, 0, 0, 8, 7])  # top-4: {0, 1, 4, 5}
    m2 = torch.tensor([0., 0, 9, 0, 8, 7])   # top-4: {2, 4, 5, 0 (tie → lowest index)}
    out = mg.unique_share(t, [m1, m2], 4)
    assert out == {"0": 0.5, "1": 0.5, "all": 0.25}  # dim 3 is in neither


# ------------------------------------------------------------------ fidelity
def test_pruning_error_and_snr_hand_computed():
    h = torch.tensor([[3.0, 4.0], [0.0, 5.0]])     # norms 5, 5 -> mu = 5
    ht = torch.tensor([[3.0, 3.0], [1.0, 5.0]])    # errors: 1, 1
    # error = (1 + 1) / (N d mu^2) = 2 / (4 * 25); signal = (25 + 25) / 100
    assert fidelity.pruning_error(h, ht) == pytest.approx(0.02)
    assert fidelity.snr_db(h, ht) == pytest.approx(10 * math.log10(0.5 / 0.02))
    assert fidelity.snr_db(h, h) == math.inf


def test_fidelity_streams_and_is_scale_invariant():
    g = torch.Generator().manual_seed(1)
    h, ht = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
    acc = fidelity.FidelityAccumulator()
    acc.add(h[:10], ht[:10])
    acc.add(h[10:], ht[10:])
    assert acc.pruning_error == pytest.approx(fidelity.pruning_error(h, ht))
    assert fidelity.snr_db(7 * h, 7 * ht) == pytest.approx(fidelity.snr_db(h, ht))


# ------------------------------------------------------------------ mask IoU
def test_iou_intersection_over_seeds_then_languages():
    # kept masks (True = kept), 1 x 6; pruned = ~mask
    en = [{"model.layers.0.mlp.down_proj.weight": torch.tensor([[0, 0, 1, 1, 0, 1]], dtype=torch.bool)},
          {"model.layers.0.mlp.down_proj.weight": torch.tensor([[0, 1, 0, 1, 0, 1]], dtype=torch.bool)}]
    de = [{"model.layers.0.mlp.down_proj.weight": torch.tensor([[0, 1, 1, 0, 1, 1]], dtype=torch.bool)}]
    s_en = mi.stable_pruned(en)["model.layers.0.mlp.down_proj.weight"]
    assert s_en.tolist() == [[True, False, False, False, True, False]]  # pruned by both seeds
    assert mi.seed_agreement(en)["model.layers.0.mlp.down_proj.weight"] == pytest.approx(2 / 4)
    s_de = mi.stable_pruned(de)
    res = mi.pairwise_iou(mi.stable_pruned(en), s_de)
    # en: {0, 4}; de: {0, 3} -> |∩| = 1, |∪| = 3
    assert res["overall"] == pytest.approx(1 / 3)
    assert res["per_type"] == {"mlp.down_proj": pytest.approx(1 / 3)}
    assert res["per_layer"] == {0: pytest.approx(1 / 3)}
    assert mi.iou(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0


def test_iou_per_type_is_mean_and_per_layer_is_pooled():
    a = {"m.layers.0.q.weight": torch.tensor([1, 1, 0, 0], dtype=torch.bool),
         "m.layers.0.k.weight": torch.tensor([1, 0, 0, 0], dtype=torch.bool),
         "m.layers.1.q.weight": torch.tensor([1, 1, 1, 1], dtype=torch.bool)}
    b = {"m.layers.0.q.weight": torch.tensor([1, 0, 0, 0], dtype=torch.bool),
         "m.layers.0.k.weight": torch.tensor([1, 0, 0, 0], dtype=torch.bool),
         "m.layers.1.q.weight": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    r = mi.pairwise_iou(a, b)
    assert r["per_matrix"]["m.layers.0.q.weight"] == pytest.approx(0.5)
    assert r["per_type"]["q"] == pytest.approx((0.5 + 0.5) / 2)
    assert r["per_layer"][0] == pytest.approx((1 + 1) / (2 + 1))
    assert r["overall"] == pytest.approx(4 / 7)
    assert mi.split_name("model.layers.12.self_attn.o_proj.weight") == (12, "self_attn.o_proj")


# ------------------------------------------------------------------ LAPE
def test_lape_entropy_hand_computed():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.0], [0.0, 0.0], [0.2, 0.6]])
    e = lape.lape_entropy(p)
    assert e[0].item() == pytest.approx(math.log(2))
    assert e[1].item() == 0.0
    assert e[2].item() == 0.0
    assert e[3].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_lape_selection_filters_ranks_and_assigns():
    # 1 layer, 200 neurons, 2 languages; most neurons are uniform and weakly active
    probs = torch.full((1, 200, 2), 0.1)
    probs[0, :20] = 0.3                                 # frequently active for both: high entropy
    probs[0, 20] = torch.tensor([0.9, 0.05])            # language 0 specific
    probs[0, 21] = torch.tensor([0.02, 0.8])            # language 1 specific
    probs[0, 22] = torch.tensor([0.0, 0.01])            # lowest entropy of all, but rarely active
    ent, spec = lape.select_language_neurons(probs, top_rate=0.01, filter_rate=0.95, bar_rate=0.95)
    assert ent.shape == (1, 200)
    # 1 % of 200 = 2 neurons; neuron 22 (entropy ~0) is filtered out by the activation bar
    assert spec[0, :, 0].nonzero().flatten().tolist() == [20]
    assert spec[0, :, 1].nonzero().flatten().tolist() == [21]
    counts = lape.removal_counts(spec, torch.linspace(0, 1, 200).view(1, 200), removed_at=0.105)
    assert counts[0]["neurons"] == 1 and counts[0]["mean_pruned_share"] == pytest.approx(20 / 199)
    assert counts[0]["removed"] == 0 and counts[1]["removed"] == 1  # shares 20/199 < 0.105 <= 21/199


def test_kth_quantile_matches_reference_kthvalue():
    v = torch.arange(1, 101, dtype=torch.float)  # 1..100
    assert lape.kth_quantile(v, 0.95) == 95.0


# ------------------------------------------------------------------ LSAR
def test_lsar_split_reconstructs_and_is_orthogonal():
    g = torch.Generator().manual_seed(3)
    M = torch.randn(16, 4, generator=g, dtype=torch.float64) + 3.0
    mu, Ms, gamma = lsar.lsar_subspace(M)                   # rank L - 1 = 3
    assert Ms.shape == (16, 3) and gamma.shape == (4, 3)
    assert torch.allclose(Ms.t() @ Ms, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert (Ms.t() @ mu).abs().max() < 1e-10                # mu ⟂ span(M_s)
    assert torch.allclose(mu[:, None] + Ms @ gamma.t(), M, atol=1e-9)  # full rank: exact
    E = torch.randn(5, 16, generator=g, dtype=torch.float64)
    s, a = lsar.lsar_split(E, Ms)
    assert torch.allclose(s + a, E, atol=1e-12)
    assert (a @ Ms).abs().max() < 1e-10                     # agnostic part has no subspace component
    # the language means minus the shared vector lie in the language-specific subspace
    s_m, a_m = lsar.lsar_split((M - mu[:, None]).t(), Ms)
    assert a_m.abs().max() < 1e-9


def test_lsar_low_rank_and_bad_input():
    g = torch.Generator().manual_seed(4)
    M = torch.randn(10, 5, generator=g, dtype=torch.float64)
    mu, Ms, gamma = lsar.lsar_subspace(M, rank=2)
    assert Ms.shape == (10, 2) and (Ms.t() @ mu).abs().max() < 1e-10
    with pytest.raises(UserError):
        lsar.lsar_subspace(M[:, :1])
    with pytest.raises(UserError):
        lsar.lsar_subspace(M, rank=5)


def test_lsar_component_change_zero_for_identical_models():
    g = torch.Generator().manual_seed(5)
    M = torch.randn(8, 3, generator=g, dtype=torch.float64)
    _, Ms, _ = lsar.lsar_subspace(M)
    E = torch.randn(4, 8, generator=g, dtype=torch.float64)
    r = lsar.component_change(E, E, Ms, Ms)
    assert r["delta_specific"] == 0 and r["delta_agnostic"] == 0
    r2 = lsar.component_change(E, E + 1.0, Ms, Ms)
    assert r2["delta_agnostic"] > 0
