"""DSnoT: expected error, one swap by hand, exact row / group sparsity, |ε| decreasing, engine hook."""
import sys

import pytest
import torch

import polyprune as pp
from polyprune.errors import UserError
from polyprune.methods import Spec, get_refiner
from polyprune.methods.dsnot import dsnot_refine, expected_error
from polyprune.stats import ModuleStats, SetStats


def test_expected_error_hand():
    W = torch.tensor([[1.0, 2.0, -0.5, 0.5], [4.0, -1.0, 2.0, 3.0]])
    mu = torch.tensor([1.0, 2.0, 3.0, -1.0])
    kept = torch.tensor([[False, False, True, True], [True, False, False, True]])
    assert expected_error(W, mu, kept).tolist() == pytest.approx([1 + 4, -2 + 6])


def test_one_swap_by_hand():
    W = torch.tensor([[1.0, 2.0, -0.5, 0.5]])
    ones = torch.ones(4)
    kept = torch.tensor([[False, False, True, True]])  # ε = 1 + 2 = 3
    new, swaps = dsnot_refine(W, ones, ones, ones, kept)
    # grow col 1 (largest W·μ/var with the sign of ε), prune col 2 (the only kept W·μ < 0): ε = 3 − 2 − 0.5
    assert new.tolist() == [[False, True, False, True]] and swaps == 1
    assert expected_error(W, ones, new).tolist() == pytest.approx([0.5])
    # the variance divides the growth metric: make col 0 the better candidate
    new, _ = dsnot_refine(W, ones, torch.tensor([0.25, 1.0, 1.0, 1.0]), ones, kept)
    assert new.tolist() == [[True, False, False, True]]  # ε = 3 − 1 − 0.5 = 1.5
    # nothing to do below the threshold
    new, swaps = dsnot_refine(W, ones, ones, ones, kept, threshold=3.5)
    assert torch.equal(new, kept) and swaps == 0


def test_same_sign_rule():
    W = torch.tensor([[1.0, 2.0, -1.5, 0.5]])
    ones = torch.ones(4)
    kept = torch.tensor([[False, False, True, True]])  # ε = 3; the only swap gives 3 − 2 − 1.5 = −0.5
    new, swaps = dsnot_refine(W, ones, ones, ones, kept, same_sign=True)
    assert torch.equal(new, kept) and swaps == 0
    new, swaps = dsnot_refine(W, ones, ones, ones, kept, same_sign=False)  # the reference's default
    assert new.tolist() == [[False, True, False, True]] and swaps == 1


def _random_case(seed, rows=24, cols=64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    mu = torch.randn(cols, generator=g)
    var = torch.rand(cols, generator=g) + 0.1
    norm = torch.rand(cols, generator=g) + 0.5
    return W, mu, var, norm


def test_rows_keep_sparsity_and_error_shrinks():
    W, mu, var, norm = _random_case(0)
    score = W.abs() * norm
    kept = torch.ones_like(W, dtype=torch.bool)
    kept.scatter_(1, torch.sort(score, dim=1, stable=True)[1][:, :32], False)
    new, swaps = dsnot_refine(W, mu, var, norm, kept)
    assert swaps > 0
    assert torch.equal((~new).sum(1), (~kept).sum(1))
    e0, e1 = expected_error(W, mu, kept).abs(), expected_error(W, mu, new).abs()
    assert (e1 <= e0 + 1e-12).all() and float(e1.sum()) < 0.5 * float(e0.sum())


def test_nm_groups_keep_sparsity():
    W, mu, var, norm = _random_case(1)
    score = (W.abs() * norm).reshape(24, 16, 4)
    pruned = torch.zeros_like(score, dtype=torch.bool)
    pruned.scatter_(-1, torch.topk(score, 2, dim=-1, largest=False)[1], True)
    kept = ~pruned.reshape(24, 64)
    new, swaps = dsnot_refine(W, mu, var, norm, kept, m=4)
    assert swaps > 0
    assert ((~new).reshape(24, 16, 4).sum(-1) == 2).all()
    e0, e1 = expected_error(W, mu, kept).abs(), expected_error(W, mu, new).abs()
    assert (e1 <= e0 + 1e-12).all() and float(e1.sum()) < float(e0.sum())


def test_max_cycles_bounds_swaps():
    W, mu, var, norm = _random_case(2)
    kept = torch.ones_like(W, dtype=torch.bool)
    kept[:, ::2] = False
    _, swaps = dsnot_refine(W, mu, var, norm, kept, max_cycles=3)
    assert 0 < swaps <= 3 * 24


def test_refiner_uses_sample_scaled_mean():
    g = torch.Generator().manual_seed(3)
    ms = ModuleStats(8, frozenset({"moments", "sqnorm"}))
    xs = [torch.randn(5, 8, generator=g) + 0.3 for _ in range(4)]  # 4 samples of 5 tokens
    for x in xs:
        ms.add(x)
    allx = torch.cat(xs).double()
    assert torch.allclose(ms.mean, allx.mean(0)) and torch.allclose(ms.variance.double(), allx.var(0, unbiased=False),
                                                                    atol=1e-6)
    W = torch.randn(6, 8, generator=g)
    kept = torch.ones_like(W, dtype=torch.bool)
    kept[:, :4] = False
    ref = get_refiner("dsnot")
    out = ref.fn(W, SetStats({"target": ms}), Spec(0.5, options={"threshold": 0.01}), kept)
    mu = ms.mean.float() * 5  # tokens per sample: the reference's per-sample sum of x
    want, _ = dsnot_refine(W, mu, ms.variance, ms.feature_norm(), kept, threshold=0.01)
    assert torch.equal(out.kept, want)
    token = ref.fn(W, SetStats({"target": ms}), Spec(0.5, options={"threshold": 0.01, "error_scale": "token"}), kept)
    want, _ = dsnot_refine(W, ms.mean.float(), ms.variance, ms.feature_norm(), kept, threshold=0.01)
    assert torch.equal(token.kept, want)
    skipped = ref.fn(W, SetStats({"target": ms}), Spec(0.5, name="model.layers.0.mlp.up_proj.weight",
                                                       options={"skip": "mlp"}), kept)
    assert torch.equal(skipped.kept, kept)


def test_engine_hook(tiny, calib_ids):
    plain = pp.prune(tiny("llama"), calib_ids, "wanda", 0.5)
    refined = pp.prune(tiny("llama"), calib_ids, "wanda", 0.5, refine="dsnot", refine_options={"threshold": 0.0})
    assert refined.record["refine"] == "dsnot"
    assert refined.record["achieved_sparsity"] == plain.record["achieved_sparsity"]
    changed = 0
    for name, mask in refined.masks.items():
        assert torch.equal((~mask).sum(1), (~plain.masks[name]).sum(1))
        changed += int((mask != plain.masks[name]).sum())
    assert changed > 0
    nm = pp.prune(tiny("llama"), calib_ids, "wanda", pattern="2:4", refine="dsnot")
    for mask in nm.masks.values():
        assert ((~mask).reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()


def test_bad_input(tiny, calib_ids):
    with pytest.raises(UserError, match="uses none"):
        pp.prune(tiny("llama"), calib_ids, "magnitude", 0.5, refine="dsnot")
    with pytest.raises(UserError, match="updates weights"):
        pp.prune(tiny("llama"), calib_ids, "sparsegpt", 0.5, refine="dsnot")
    with pytest.raises(UserError, match="no option"):
        pp.prune(tiny("llama"), calib_ids, "wanda", 0.5, refine="dsnot", refine_options={"cycles": 3})
    with pytest.raises(UserError, match="unknown refinement"):
        pp.prune(tiny("llama"), calib_ids, "wanda", 0.5, refine="nope")
    with pytest.raises(UserError, match="not 2:4 in column order"):
        pp.prune(tiny("llama"), calib_ids, "ria", pattern="2:4", refine="dsnot")


def test_cli_refine_on_data_free_method_exits_2(tiny_dir, tmp_path, monkeypatch, capsys):
    from polyprune.cli import main
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["polyprune", "prune", "--model", str(tiny_dir("llama")), "--method",
                                      "magnitude", "--refine", "dsnot", "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "refinement 'dsnot' needs input statistics" in capsys.readouterr().err
    assert not out.exists()


def test_cli_refine_and_allocation_options(tiny_dir, tmp_path, monkeypatch):
    import json

    import yaml
    from polyprune.cli import main
    text = tmp_path / "cal.txt"
    text.write_text(" ".join(["The quick brown fox jumps over the lazy dog."] * 40), encoding="utf-8")
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [
        "polyprune", "prune", "--model", str(tiny_dir("llama")), "--method", "wanda", "--sparsity", "0.5",
        "--calibration-file", str(text), "--nsamples", "4", "--seqlen", "16", "--refine", "dsnot",
        "--refine-option", "threshold=0", "--allocation", "owl", "--allocation-option", "m=3",
        "--allocation-option", "lam=0.05", "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0
    rec = json.loads((out / "record.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert rec["refine"] == "dsnot" and rec["refine_options"] == {"threshold": 0}
    assert cfg["refine"] == "dsnot" and cfg["allocation_options"] == {"m": 3, "lam": 0.05}
    assert sorted(rec["layer_sparsity"]) == pytest.approx([0.45, 0.55])
