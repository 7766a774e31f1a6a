"""Language-aware Wanda: per-language summary by hand, the score, one language = Wanda, extension point."""
import pytest
import torch

import polyprune as pp
from polyprune.errors import UserError
from polyprune.methods import Spec, get_method
from polyprune.methods.lang_wanda import LANG_SCORES, language_summary, lang_wanda_scores, register_lang_score
from polyprune.stats import ModuleStats, SetStats


def _two_language_stats() -> ModuleStats:
    ms = ModuleStats(2, frozenset({"per_lang"}))
    ms.add(torch.tensor([[1.0, 0.0], [1.0, 2.0]]), ("a",))  # Σx² = [2, 4] over 2 tokens
    ms.add(torch.tensor([[3.0, -4.0]]), ("b",))  # Σx² = [9, 16] over 1 token
    return ms


def test_summary_hand():
    s = language_summary(_two_language_stats())
    assert s["langs"] == ["a", "b"]
    assert torch.allclose(s["norms"], torch.tensor([[1.0, 2 ** 0.5], [3.0, 4.0]]))
    assert s["mean"].tolist() == pytest.approx([2.0, (2 ** 0.5 + 4) / 2])
    assert s["std"].tolist() == pytest.approx([1.0, (4 - 2 ** 0.5) / 2])  # population std of two values
    assert s["actprob"].tolist() == [[1.0, 0.5], [1.0, 0.0]]


def test_score_hand():
    ms = _two_language_stats()
    W = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    s = lang_wanda_scores(W, ms, beta=1.0)
    assert s[0].tolist() == pytest.approx([3.0, 4.0])  # mean + std = max of two values
    s = lang_wanda_scores(W, ms, beta=0.5)
    assert s[1].tolist() == pytest.approx([2 * 2.5, 0.5 * ((2 ** 0.5 + 4) / 2 + 0.5 * (4 - 2 ** 0.5) / 2)])
    kept = get_method("lang-wanda").fn(W, SetStats({"target": ms}), Spec(0.5)).kept
    assert kept.tolist() == [[False, True], [True, False]]  # per row: the lower score pruned


def test_one_language_is_wanda(tiny, calib_ids):
    cal = [{"input_ids": r, "langs": ["eng_Latn"]} for r in calib_ids]
    a = pp.prune(tiny("llama"), cal, "wanda", 0.5).masks
    b = pp.prune(tiny("llama"), cal, "lang-wanda", 0.5).masks
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_languages_weigh_equally(tiny, calib_ids):
    """Duplicating one language's samples changes Wanda's statistics but not the language-aware score."""
    base = [{"input_ids": calib_ids[0], "langs": ["eng_Latn"]}, {"input_ids": calib_ids[1], "langs": ["fra_Latn"]}]
    dup = base + [{"input_ids": calib_ids[0], "langs": ["eng_Latn"]}] * 3
    a = pp.prune(tiny("llama"), base, "lang-wanda", 0.5, sequential=False).masks
    b = pp.prune(tiny("llama"), dup, "lang-wanda", 0.5, sequential=False).masks
    assert all(torch.equal(a[k], b[k]) for k in a)
    w1 = pp.prune(tiny("llama"), base, "wanda", 0.5, sequential=False).masks
    w2 = pp.prune(tiny("llama"), dup, "wanda", 0.5, sequential=False).masks
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    c = pp.prune(tiny("llama"), base, "lang-wanda", 0.5, sequential=False, method_options={"beta": 0.0}).masks
    assert any(not torch.equal(a[k], c[k]) for k in a)  # β matters with two languages


def test_extension_point_and_bad_input(tiny, calib_ids):
    @register_lang_score("min_test")
    def min_norm(summary, beta):
        return summary["norms"].min(0).values

    try:
        ms = _two_language_stats()
        s = lang_wanda_scores(torch.ones(1, 2), ms, score="min_test")
        assert s[0].tolist() == pytest.approx([1.0, 2 ** 0.5])
    finally:
        LANG_SCORES.pop("min_test")
    with pytest.raises(UserError, match="unknown language-aware score"):
        lang_wanda_scores(torch.ones(1, 2), _two_language_stats(), score="m-wanda")
    with pytest.raises(UserError, match="negative"):
        pp.prune(tiny("llama"), calib_ids, "lang-wanda", 0.5, method_options={"beta": -1})
