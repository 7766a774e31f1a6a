"""Evaluation math against hand-computed values: perplexity of a known distribution, windows,
RankC, bootstrap tests, BLEU/chrF via sacrebleu, cloze templates."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from polyprune.evaluate.cloze import MARC_TEMPLATE, XNLI_TEMPLATE
from polyprune.evaluate.consistency import consist, rank_weights, rankc, ranking
from polyprune.evaluate.perplexity import perplexity, summarize, windows
from polyprune.evaluate.significance import bleu_bootstrap, compare, fornaciari_bootstrap, paired_bootstrap


class FixedLM(nn.Module):
    """Next-token distribution ``softmax(logits)`` at every position, whatever the context."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.float(), requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None, use_cache=False, **kw):
        b, n = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(b, n, -1).clone())


def test_perplexity_of_uniform_model_is_vocab_size(tokenizer):
    model = FixedLM(torch.zeros(len(tokenizer)))
    texts = ["The quick brown fox.", "Le renard brun rapide saute.", "敏捷的棕色狐狸"]
    r = perplexity(model, tokenizer, texts, batch_size=2)
    n_tok = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert r["tokens"] == n_tok and r["bytes"] == n_bytes
    assert r["ppl"] == pytest.approx(len(tokenizer), rel=1e-5)
    assert r["bpb"] == pytest.approx(n_tok * math.log(len(tokenizer)) / math.log(2) / n_bytes, rel=1e-5)


def test_perplexity_of_known_distribution(tokenizer):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(tokenizer), generator=g) * 3
    logp = torch.log_softmax(logits.double(), -1)
    model = FixedLM(logits)
    texts = ["The quick brown fox jumps over the lazy dog.", "def main():\n    return 1\n"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    nll = [-float(logp[torch.tensor(x)].sum()) for x in ids]
    r = perplexity(model, tokenizer, texts, batch_size=1)
    assert [p["nll"] for p in r["per_text"]] == pytest.approx(nll, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(sum(nll) / sum(map(len, ids))), rel=1e-5)
    # windowing never changes a context-free model's scores; every token is scored once
    w = perplexity(model, tokenizer, texts, batch_size=3, max_length=5, stride=2)
    assert w["tokens"] == r["tokens"] and w["nll"] == pytest.approx(r["nll"], rel=1e-5)


def test_windows_score_every_token_once():
    assert windows(3, 8, 4) == [(0, 3, 3)]
    assert windows(10, 5, 2) == [(0, 4, 4), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert windows(10, 5, 4) == [(0, 4, 4), (4, 8, 4), (6, 10, 2)]
    for n, L, s in [(37, 8, 3), (100, 16, 15), (5, 2, 1)]:
        ws = windows(n, L, s)
        assert sum(k for _, _, k in ws) == n and all(e - b <= L - 1 for b, e, _ in ws)
    with pytest.raises(ValueError):
        windows(10, 5, 5)


def test_summarize_bits_per_byte():
    s = summarize([{"nll": 2 * math.log(2), "tokens": 2, "bytes": 4}, {"nll": 2 * math.log(2), "tokens": 2, "bytes": 4}])
    assert s["bpb"] == pytest.approx(0.5) and s["ppl"] == pytest.approx(2.0)


def test_rankc_worked_example():
    w = rank_weights(3)
    assert w == pytest.approx([math.e ** 2 / (math.e ** 2 + math.e + 1), math.e / (math.e ** 2 + math.e + 1),
                               1 / (math.e ** 2 + math.e + 1)])
    a, b, c = 0, 1, 2
    assert consist([a, b, c], [b, a, c]) == pytest.approx(0.3348, abs=1e-4)
    assert consist([a, b, c], [a, c, b]) == pytest.approx(0.8776, abs=1e-4)
    assert consist([a, b, c], [a, b, c]) == pytest.approx(1.0)
    # descending probability: the most likely candidate ranks first
    assert ranking([-3.0, -1.0, -2.0]) == [1, 2, 0]
    mean, per = rankc([[-1, -2, -3], [-1, -2, -3]], [[-2, -1, -3], [-1, -3, -2]])
    assert per == pytest.approx([0.3348, 0.8776], abs=1e-4) and mean == pytest.approx((0.3348 + 0.8776) / 2, abs=1e-4)


def _discordant(n, a_wins, b_wins):
    a = [1] * a_wins + [0] * b_wins + [1] * ((n - a_wins - b_wins) // 2) + [0] * (n - a_wins - b_wins - (n - a_wins - b_wins) // 2)
    b = [0] * a_wins + [1] * b_wins + a[a_wins + b_wins:]
    return a, b


def test_paired_bootstrap_constructed_cases():
    assert paired_bootstrap([1] * 50, [0] * 50)["p_value"] == 0.0
    same = [1, 0, 1, 1, 0] * 20
    assert paired_bootstrap(same, same)["p_value"] == 1.0
    # 30 vs 10 discordant pairs of 400: z ≈ 3.2 (McNemar exact p ≈ 0.002)
    a, b = _discordant(400, 30, 10)
    r = paired_bootstrap(a, b, seed=1)
    assert r["delta"] == pytest.approx(0.05) and r["p_value"] < 0.01
    # 20 vs 12 of 400: z ≈ 1.42 → two-sided p ≈ 0.16
    a, b = _discordant(400, 20, 12)
    r = paired_bootstrap(a, b, seed=1)
    assert 0.1 < r["p_value"] < 0.24
    assert paired_bootstrap(a, b, seed=1) == r  # seeded
    # direction does not matter for a two-sided test
    assert paired_bootstrap(b, a, seed=1)["p_value"] == r["p_value"]


def test_fornaciari_bootstrap():
    assert fornaciari_bootstrap([1] * 100, [0] * 100)["p_value"] == 0.0
    x = [1, 0] * 50
    assert fornaciari_bootstrap(x, x)["p_value"] == 1.0
    a, b = _discordant(1000, 60, 20)
    strong = fornaciari_bootstrap(a, b, seed=0)["p_value"]
    a, b = _discordant(1000, 22, 20)
    weak = fornaciari_bootstrap(a, b, seed=0)["p_value"]
    assert strong < 0.1 < weak


def test_bleu_and_chrf_equal_sacrebleu():
    import sacrebleu
    from polyprune.evaluate.translation import corpus_metrics
    hyps = ["The cat sat on the mat.", "A dog barked loudly at night", "hello"]
    refs = ["The cat sat on the mat.", "The dog barked loudly all night.", "Hello there."]
    m = corpus_metrics(hyps, refs, "eng_Latn")
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert m["bleu_tokenize"] == "13a" and "tok:13a" in m["bleu_signature"]
    assert len(m["sentence_bleu"]) == 3 and m["sentence_bleu"][0] == pytest.approx(100.0)
    assert m["spbleu"] is not None or "spbleu_reason" in m
    zh_h, zh_r = ["猫坐在垫子上。"], ["猫坐在垫子上了。"]
    z = corpus_metrics(zh_h, zh_r, "zho_Hans")
    assert z["bleu_tokenize"] == "zh"
    assert z["bleu"] == pytest.approx(sacrebleu.corpus_bleu(zh_h, [zh_r], tokenize="zh").score)


def test_bleu_bootstrap_and_compare():
    refs = [f"the number {i} is written here today" for i in range(60)]
    good = list(refs)
    bad = [f"a number {i} was here" for i in range(60)]
    r = bleu_bootstrap(good, bad, refs, n_resamples=200, seed=0)
    assert r["delta"] > 0 and r["p_value"] < 0.05
    same = bleu_bootstrap(bad, bad, refs, n_resamples=200, seed=0)
    assert same["p_value"] > 0.5

    def result(metric, per, examples):
        return {"task": "t", "primary": {"metric": metric, "per_lang": {"fra_Latn": 0.0}},
                "metrics": {"fra_Latn": {"bleu_tokenize": "13a"}}, "per_example": {"fra_Latn": per},
                "examples": {"fra_Latn": examples}}
    ex = [{"id": i, "reference": r} for i, r in enumerate(refs)]
    c = compare(result("bleu", good, ex), result("bleu", bad, ex), n_resamples=200)
    assert c["fra_Latn"]["significant"] and c["fra_Latn"]["p_value"] < 0.1
    a, b = _discordant(400, 30, 10)
    ex = [{"id": i} for i in range(400)]
    c = compare(result("accuracy", a, ex), result("accuracy", b, ex))["fra_Latn"]
    assert c["significant"] and c["p_value"] < 0.01 and "p_value_fornaciari" in c
    ppl_a = [{"nll": 10.0, "tokens": 5}] * 50
    ppl_b = [{"nll": 12.0, "tokens": 5}] * 50
    c = compare(result("ppl", ppl_a, ex[:50]), result("ppl", ppl_b, ex[:50]))["fra_Latn"]
    assert c["delta"] == pytest.approx(math.exp(2) - math.exp(2.4)) and c["p_value"] == 0.0


def test_cloze_templates_exact_strings():
    it = {"premise": "A man is sleeping.", "hypothesis": "He is awake."}
    assert [XNLI_TEMPLATE.fill(it, v) for v in XNLI_TEMPLATE.verbalizers] == [
        "A man is sleeping., right? Yes, He is awake.",
        "A man is sleeping., right? Also, He is awake.",
        "A man is sleeping., right? No, He is awake."]
    assert XNLI_TEMPLATE.prefix(it) == "A man is sleeping., right?"
    rev = {"text": "Great product."}
    assert [MARC_TEMPLATE.fill(rev, v) for v in MARC_TEMPLATE.verbalizers] == [
        "Great product. It is negative", "Great product. It is positive"]
