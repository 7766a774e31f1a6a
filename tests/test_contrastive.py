"""The contrastive Wanda score of Kim et al. (Eq. 4): S = |W|·‖X‖·‖X‖/(‖Z‖+ε), roles by set name."""
import pytest
import torch

import polyprune as pp
from polyprune.calibration import Calibration, Sample
from polyprune.errors import UserError
from polyprune.methods import Spec, get_method
from polyprune.methods.wanda import wanda_scores
from polyprune.stats import ModuleStats, SetStats

W = torch.tensor([[5.0, 1.0, 1.0, 1.0],
                  [1.0, -1.0, 1.0, -1.0]])


def stats_of(*tokens) -> ModuleStats:
    st = ModuleStats(4, frozenset({"sqnorm"}))
    st.add(torch.tensor([tokens], dtype=torch.float32).reshape(-1, 4))
    return st


X = stats_of(1.0, 2.0, 3.0, 4.0)  # ‖X‖ = [1, 2, 3, 4]
Z = stats_of(4.0, 1.0, 9.0, 2.0)  # ‖Z‖ = [4, 1, 9, 2]


def kept(method, stats, **options):
    return get_method(method).fn(W.clone(), stats, Spec(0.5, options=options)).kept


def test_hand_computed_scores_and_masks():
    torch.testing.assert_close(X.feature_norm(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # ‖X‖²/‖Z‖ = [1/4, 4/1, 9/9, 16/2] = [0.25, 4, 1, 8]
    scores = wanda_scores(W, X.feature_norm() ** 2 / (Z.feature_norm() + 1e-8))
    torch.testing.assert_close(scores, torch.tensor([[1.25, 4.0, 1.0, 8.0], [0.25, 4.0, 1.0, 8.0]]))
    # contrastive: each row keeps its 2 largest scores → columns 1 and 3
    expect = torch.tensor([[False, True, False, True], [False, True, False, True]])
    assert torch.equal(kept("wanda-contrastive", SetStats({"target": X, "contrast": Z})), expect)
    # plain Wanda on X alone: |W|·‖X‖ = [[5, 2, 3, 4], [1, 2, 3, 4]] → columns {0, 3} and {2, 3}
    assert torch.equal(kept("wanda", SetStats({"target": X})),
                       torch.tensor([[True, False, False, True], [False, False, True, True]]))


def test_roles_by_name_not_order():
    a = kept("wanda-contrastive", SetStats({"target": X, "contrast": Z}))
    b = kept("wanda-contrastive", SetStats({"contrast": Z, "target": X}))
    assert torch.equal(a, b)
    # swapping the names swaps the roles: ‖Z‖²/‖X‖ = [16, 0.5, 27, 1] → scores [[80, .5, 27, 1], [16, .5, 27, 1]]
    swapped = kept("wanda-contrastive", SetStats({"target": Z, "contrast": X}))
    assert torch.equal(swapped, torch.tensor([[True, False, True, False], [True, False, True, False]]))


def test_eps_keeps_dead_contrast_features_finite():
    dead = stats_of(0.0, 1.0, 1.0, 1.0)  # feature 0 never fires on the contrast set
    m = kept("wanda-contrastive", SetStats({"target": X, "contrast": dead}), eps=1e-8)
    assert m[:, 0].all()  # 1/1e-8: the largest score of every row
    with pytest.raises(UserError, match="contrast"):
        kept("wanda-contrastive", SetStats({"target": X}))


def _samples(seed, n, set_name):
    g = torch.Generator().manual_seed(seed)
    return [Sample(torch.randint(5, 380, (12,), generator=g), None, ("xx",), set_name) for _ in range(n)]


def test_prune_with_named_sets(tiny):
    tgt, con = _samples(0, 3, "target"), _samples(1, 3, "contrast")
    m1 = pp.prune(tiny("llama"), Calibration(tgt + con), "wanda-contrastive", 0.5).masks
    m2 = pp.prune(tiny("llama"), Calibration(con + tgt), "wanda-contrastive", 0.5).masks  # order of samples irrelevant
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    swapped = Calibration(_samples(0, 3, "contrast") + _samples(1, 3, "target"))
    m3 = pp.prune(tiny("llama"), swapped, "wanda-contrastive", 0.5).masks
    assert any(not torch.equal(m1[k], m3[k]) for k in m1)
    # layer 0 sees the dense model: its masks follow from the two sets' statistics exactly
    ms = pp.prune(tiny("llama"), Calibration(_samples(0, 3, "target") + _samples(1, 3, "contrast")), "wanda",
                  0.5, keep_stats=True)
    model = tiny("llama")
    name = "model.layers.0.mlp.up_proj.weight"
    w = dict(model.named_parameters())[name].detach()
    x = ms.stats[name]["target"]["scaler_row"].sqrt()
    z = ms.stats[name]["contrast"]["scaler_row"].sqrt()
    k = int(w.shape[1] * 0.5)
    order = torch.sort(wanda_scores(w, x * x / (z + 1e-8)), dim=1, stable=True)[1]
    expect = torch.ones_like(w, dtype=torch.bool).scatter(1, order[:, :k], False)
    assert torch.equal(m1[name], expect)
    with pytest.raises(UserError, match="contrast"):
        pp.prune(tiny("llama"), Calibration(_samples(0, 2, "target")), "wanda-contrastive", 0.5)


def test_contrast_from_config(tokenizer, tmp_path):
    from polyprune.config import CalibrationConfig
    from polyprune.pipeline import calibration_from_config
    d = tmp_path / "flores200" / "devtest"
    d.mkdir(parents=True)
    for code in ("fra_Latn", "eng_Latn", "deu_Latn"):
        (d / f"{code}.txt").write_text("".join(f"{code} {i}\n" for i in range(520)), encoding="utf-8")
    cc = CalibrationConfig(recipe="translation", langs=["fr"], nsamples=2, k=2, contrast_lang="de",
                           data_dir=str(tmp_path))
    cal = calibration_from_config(cc, tokenizer, 0, "wanda-contrastive")
    assert cal.sets == ["contrast", "target"]
    assert [s.langs for s in cal.subset("contrast")] == [("deu_Latn",)] * 2
    assert all(s.text.startswith("German: deu_Latn 5") for s in cal.subset("contrast"))
    assert [s.langs for s in cal.subset("target")] == [("fra_Latn", "eng_Latn")] * 2
    with pytest.raises(UserError, match="needs a contrast set"):
        calibration_from_config(cc.model_copy(update={"contrast_lang": None}), tokenizer, 0, "wanda-contrastive")
    with pytest.raises(UserError, match="does not use one"):
        calibration_from_config(cc, tokenizer, 0, "wanda")
