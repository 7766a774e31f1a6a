"""MBS proportional calibration: counts (rounding fixed to N), weights files, the recipe."""
from collections import Counter

import pytest
import torch

from polyprune.calibration import build_calibration
from polyprune.calibrations.mbs import proportional_counts, read_weights
from polyprune.errors import UserError

SIX = ("eng_Latn", "fra_Latn", "zho_Hans", "swh_Latn", "hin_Deva", "arb_Arab")


def test_counts_hand():
    assert proportional_counts({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}  # remainder: first
    assert proportional_counts({"a": 1, "b": 1, "c": 2}, 8) == {"a": 2, "b": 2, "c": 4}  # exact
    assert proportional_counts({"a": 100, "b": 1}, 2) == {"a": 1, "b": 1}  # max(1, ·) then one fewer for a
    # 2.5 rounds up to 3 (not to even); 3 + 3 = 6 > 5: the smaller remainder (both −0.5: the first) gives one
    assert proportional_counts({"a": 1, "b": 1}, 5) == {"a": 2, "b": 3}


def test_counts_bloom_six_languages():
    w = read_weights(None)
    sub = {k: w[k] for k in SIX}  # 87, 37, 47, 1, 4, 13 (of 189)
    # quotas 7.37 3.13 3.98 0.08 0.34 1.10 -> 7 3 4 1 1 1 = 17 -> zho (remainder −0.02) gives one back
    assert proportional_counts(sub, 16) == {"eng_Latn": 7, "fra_Latn": 3, "zho_Hans": 3, "swh_Latn": 1,
                                            "hin_Deva": 1, "arb_Arab": 1}
    assert proportional_counts(sub, 189) == {k: int(v) for k, v in sub.items()}  # N = Σp: the weights


def test_counts_sum_to_n_always():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        L = int(torch.randint(1, 12, (1,), generator=g))
        w = {f"l{i}": float(x) for i, x in enumerate(torch.rand(L, generator=g) ** 4 * 100 + 1e-3)}
        n = L + int(torch.randint(0, 60, (1,), generator=g))
        c = proportional_counts(w, n)
        assert sum(c.values()) == n and min(c.values()) >= 1
        for a in w:  # a larger weight never gets fewer samples
            assert all(c[a] >= c[b] for b in w if w[a] > w[b])
        if all(n * x / sum(w.values()) >= 1 for x in w.values()):  # no floor at 1 needed: within one
            assert all(abs(c[k] - n * w[k] / sum(w.values())) < 1 for k in w)
    with pytest.raises(UserError, match="fewer than the 3 languages"):
        proportional_counts({"a": 1, "b": 1, "c": 1}, 2)


def test_shipped_bloom_weights():
    w = read_weights(None)
    assert len(w) == 20 and sum(w.values()) == 256
    assert w["eng_Latn"] == 87 and w["zho_Hans"] == 47 and w["zho_Hant"] == 1 and w["ibo_Latn"] == 1


def test_weights_files(tmp_path):
    csv = tmp_path / "w.csv"
    csv.write_text("lang,weight\nfr,2\nsw,0.5\n", encoding="utf-8")
    assert read_weights(csv) == {"fra_Latn": 2.0, "swh_Latn": 0.5}
    y = tmp_path / "w.yaml"
    y.write_text("eng_Latn: 3\nzh-Hans: 1\n", encoding="utf-8")
    assert read_weights(y) == {"eng_Latn": 3.0, "zho_Hans": 1.0}
    assert read_weights({"weights": {"fr": 1}}) == {"fra_Latn": 1.0}
    for bad, msg in [({"xx-Klingon": 1}, "unknown language"), ({"fr": 0}, "positive"), ({"fr": -2}, "positive"),
                     ({"fr": "a lot"}, "not a number"), ({"fr": 1, "fra_Latn": 2}, "twice")]:
        with pytest.raises(UserError, match=msg):
            read_weights(bad)
    with pytest.raises(UserError, match="does not exist"):
        read_weights(tmp_path / "missing.yaml")


def _fake_flores(root, langs):
    d = root / "flores200" / "devtest"
    d.mkdir(parents=True)
    for i, code in enumerate(langs):
        lines = [f"line {j} of {code}: the quick brown fox {'jumps ' * (1 + (j + i) % 3)}over the lazy dog."
                 for j in range(1012)]
        (d / f"{code}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_recipe_counts_and_tags(tokenizer, tmp_path):
    root = _fake_flores(tmp_path, ["eng_Latn", "fra_Latn", "swh_Latn"])
    cal = build_calibration("mbs", tokenizer, langs=["eng_Latn", "fra_Latn", "swh_Latn"], nsamples=8, seqlen=16,
                            seed=0, data_dir=str(root), weights={"en": 3, "fr": 1, "sw": 1})
    # quotas 4.8 1.6 1.6 -> 5 2 2 = 9 -> fr (first of the tied −0.4 remainders) gives one back
    assert Counter(s.langs[0] for s in cal.samples) == {"eng_Latn": 5, "fra_Latn": 1, "swh_Latn": 2}
    assert all(s.n_tokens == 16 for s in cal.samples)
    assert cal.meta["counts"] == {"eng_Latn": 5, "fra_Latn": 1, "swh_Latn": 2}
    again = build_calibration("mbs", tokenizer, langs=["eng_Latn", "fra_Latn", "swh_Latn"], nsamples=8, seqlen=16,
                              seed=0, data_dir=str(root), weights={"en": 3, "fr": 1, "sw": 1})
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(cal.samples, again.samples))
    with pytest.raises(UserError, match="has no weight"):
        build_calibration("mbs", tokenizer, langs=["deu_Latn"], nsamples=8, seqlen=16, data_dir=str(root),
                          weights={"en": 1})
    with pytest.raises(UserError, match="unknown base"):
        build_calibration("mbs", tokenizer, langs=["eng_Latn"], nsamples=8, seqlen=16, data_dir=str(root),
                          weights={"en": 1}, base="nope")


def test_recipe_on_flores(tokenizer, data_dir):
    cal = build_calibration("mbs", tokenizer, langs=list(SIX), nsamples=16, seqlen=24, seed=0, data_dir=str(data_dir))
    assert Counter(s.langs[0] for s in cal.samples) == {"eng_Latn": 7, "fra_Latn": 3, "zho_Hans": 3, "swh_Latn": 1,
                                                        "hin_Deva": 1, "arb_Arab": 1}
    assert all(min(s.source.get("lines", [500])) >= 500 for s in cal.samples)  # calibration lines only
