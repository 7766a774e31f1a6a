"""RIA: score by hand, its sums, thresholds, zig-zag dealing, linear-assignment refinement, run folder."""
import itertools

import pytest
import torch

import polyprune as pp
from polyprune.masks import Pattern
from polyprune.methods import Spec, get_method
from polyprune.methods.ria import (channel_permutation, kept_nm_score, lsa_refine, ria_scores,
                                   slot_assignment_scores, zigzag_order)
from polyprune.stats import ModuleStats, SetStats


def _stats(norm: torch.Tensor) -> SetStats:
    ms = ModuleStats(norm.numel(), frozenset({"sqnorm"}))
    ms.scaler_row = norm.float() ** 2
    return SetStats({"target": ms})


def test_scores_hand():
    W = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    s = ria_scores(W, torch.tensor([4.0, 9.0]), 0.5)  # col sums [4, 6], row sums [3, 7]
    expected = torch.tensor([[(1 / 4 + 1 / 3) * 2, (2 / 6 + 2 / 3) * 3],
                             [(3 / 4 + 3 / 7) * 2, (4 / 6 + 4 / 7) * 3]])
    assert torch.allclose(s, expected)


def test_relative_importance_sums():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(7, 11, generator=g)
    s = ria_scores(W, torch.ones(11), 0.5)
    # each column of |W|/Σcol sums to 1 and each row of |W|/Σrow sums to 1: total = in + out
    assert float(s.sum()) == pytest.approx(11 + 7, rel=1e-5)
    s2 = ria_scores(W, torch.full((11,), 4.0), 1.0)  # ‖X‖^a scales everything
    assert float(s2.sum()) == pytest.approx(4 * 18, rel=1e-5)
    W[:, 3] = 0  # a dead column is 0, not NaN
    assert torch.isfinite(ria_scores(W, torch.ones(11))).all()


def test_unstructured_threshold_and_row_scope():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(8, 16, generator=g)
    st = _stats(torch.rand(16, generator=g) + 0.1)
    meth = get_method("ria")
    kept = meth.fn(W, st, Spec(0.5)).kept
    assert int((~kept).sum()) == 64 + 1  # the reference's `<=` the value at int(n·s): one more
    scores = ria_scores(W, st.target.feature_norm())
    assert float(scores[kept].min()) > float(scores[~kept].max())  # one matrix-wide threshold
    kept = meth.fn(W, st, Spec(0.5, options={"reference_threshold": False})).kept
    assert int((~kept).sum()) == 64
    kept = meth.fn(W, st, Spec(0.25, options={"scope": "row"})).kept
    assert ((~kept).sum(1) == 4).all()
    assert all(float(scores[r][kept[r]].min()) > float(scores[r][~kept[r]].max()) for r in range(8))


def test_zigzag_hand():
    score = torch.tensor([5.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0])  # ascending order: 1 5 3 7 0 6 2 4
    assert zigzag_order(score, 2).tolist() == [1, 4, 5, 2, 3, 6, 7, 0]
    assert zigzag_order(score, 4).tolist() == [1, 7, 0, 4, 5, 3, 6, 2]


def test_slot_scores_match_brute_force():
    g = torch.Generator().manual_seed(3)
    s = torch.rand(5, 12, generator=g)
    n, m = 2, 4
    for slot in range(m):
        S = slot_assignment_scores(s, n, m, slot, chunk=2)
        for gi, r in itertools.product(range(3), range(3)):
            cols = [gi * m + j for j in range(m)]
            cols[slot] = r * m + slot
            grp = s[:, cols]
            assert float(S[gi, r]) == pytest.approx(float(torch.topk(grp, m - n, dim=1).values.sum()), rel=1e-6)


def test_permutation_recovers_best_grouping():
    s = torch.tensor([[10.0, 9.0, 8.0, 7.0, 1.0, 1.0, 1.0, 1.0]])
    assert kept_nm_score(s, 2, 4) == pytest.approx(21.0)  # identity keeps 10+9 and 1+1
    perm = channel_permutation(s, 2, 4)
    assert sorted(perm.tolist()) == list(range(8))
    assert kept_nm_score(s[:, perm], 2, 4) == pytest.approx(34.0)  # the four largest: the optimum


def test_lsa_never_worse_than_zigzag():
    g = torch.Generator().manual_seed(4)
    s = torch.rand(16, 32, generator=g) ** 3
    z = zigzag_order(s.sum(0), 4)
    p = lsa_refine(s, z, 2, 4)
    assert sorted(p.tolist()) == list(range(32))
    assert kept_nm_score(s[:, p], 2, 4) >= kept_nm_score(s[:, z], 2, 4) - 1e-6


def test_nm_mask_holds_under_permutation_and_is_saved(tiny, calib_ids, tmp_path):
    from polyprune.config import RunConfig
    from polyprune.run import write_run
    from safetensors.torch import load_file
    model = tiny("llama")
    masks = pp.prune(model, calib_ids, "ria", pattern="2:4")
    assert masks.permutations  # at least one matrix is better off permuted
    for name, mask in masks.masks.items():
        perm = masks.permutations.get(name, torch.arange(mask.shape[1]))
        pm = mask[:, perm]
        assert ((~pm).reshape(pm.shape[0], -1, 4).sum(-1) == 2).all()
    write_run(tmp_path / "run", RunConfig(method="ria", pattern="2:4", calibration={"file": "calib.txt"}), masks)
    saved = load_file(str(tmp_path / "run" / "permutations.safetensors"))
    assert set(saved) == set(masks.permutations)
    assert all(torch.equal(saved[k], masks.permutations[k]) for k in saved)


def test_permute_off_gives_plain_nm(tiny, calib_ids):
    masks = pp.prune(tiny("llama"), calib_ids, "ria", pattern="2:4", method_options={"permute": False})
    assert not masks.permutations
    for mask in masks.masks.values():
        assert ((~mask).reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()


def test_ria_pattern_spec_directly():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(6, 8, generator=g)
    res = get_method("ria").fn(W, _stats(torch.ones(8)), Spec(0.5, Pattern(2, 4)))
    kept_perm = res.kept[:, res.info["permutation"]] if "permutation" in res.info else res.kept
    assert (kept_perm.reshape(6, 2, 4).sum(-1) == 2).all()
    assert res.info["kept_score_permuted"] >= res.info["kept_score_identity"] or "permutation" not in res.info
