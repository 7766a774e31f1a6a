"""Evaluation on tiny random models: exact shared-prefix scoring, cloze, generation, LRP2, the
lm-eval bridge, the result contract, and bad input through the CLI."""
import gzip
import json
import sys
from pathlib import Path

import pytest
import torch

import forked
from polyprune.evaluate import evaluate
from polyprune.evaluate.cloze import XNLI_TEMPLATE, classify
from polyprune.evaluate.scoring import encode, grouped_logprobs, sequence_logprobs

WORDS = "the a cat dog sat ran on under mat house red blue big small quick lazy".split()


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """A tiny data folder with the shared layout: FLORES (510 lines), XNLI test/dev, MARC."""
    d = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(0)

    def sent(n=6):
        return " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (n,), generator=g).tolist()) + "."
    (d / "flores200" / "devtest").mkdir(parents=True)
    for code in ("eng_Latn", "fra_Latn"):
        (d / "flores200" / "devtest" / f"{code}.txt").write_text("\n".join(sent() for _ in range(510)) + "\n")
    for split in ("test", "dev"):
        (d / "xnli" / split).mkdir(parents=True)
        for code in ("en", "fr"):
            rows = [{"premise": sent(5), "hypothesis": sent(3), "label": i % 3} for i in range(12)]
            with gzip.open(d / "xnli" / split / f"{code}.jsonl.gz", "wt", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    (d / "marc").mkdir()
    with gzip.open(d / "marc" / "en.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(10):
            f.write(json.dumps({"text": sent(4), "stars": 1 if i < 5 else 5, "label": "negative" if i < 5 else "positive"}) + "\n")
    return d


@pytest.mark.parametrize("family", ["llama", "gemma3", "bloom", "opt"])
def test_shared_prefix_scoring_is_exact(tiny, family):
    model = tiny(family)
    g = torch.Generator().manual_seed(1)
    pre = torch.randint(5, 384, (9,), generator=g).tolist()  # longer than gemma3's sliding window (4)
    seqs = [[2] + pre + torch.randint(5, 384, (k,), generator=g).tolist() for k in (3, 5, 1, 7)]
    seqs.append([2] + torch.randint(5, 384, (6,), generator=g).tolist())
    alone = [sequence_logprobs(model, [s])[0] for s in seqs]
    batched = sequence_logprobs(model, seqs, batch_size=3)
    grouped = grouped_logprobs(model, seqs, [[0, 1, 2, 3], [4]], batch_size=3)
    for a, b, c, s in zip(alone, batched, grouped, seqs):
        assert a.shape == (len(s) - 1,)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)


def test_classify_scores_whole_sequence(tiny, tokenizer):
    model = tiny("llama")
    items = [{"premise": "The cat sat.", "hypothesis": "A dog ran.", "label": 0},
             {"premise": "The cat sat.", "hypothesis": "The mat is red.", "label": 2},
             {"premise": "Le chien dort.", "hypothesis": "Il court.", "label": 1}]
    res = classify(model, tokenizer, items, XNLI_TEMPLATE, norm="sum", batch_size=4)
    for it, r in zip(items, res):
        for j, v in enumerate(XNLI_TEMPLATE.verbalizers):
            ids = encode(tokenizer, XNLI_TEMPLATE.fill(it, v))
            assert ids[0] == tokenizer.bos_token_id
            lp = sequence_logprobs(model, [ids])[0]
            assert r["sum"][j] == pytest.approx(float(lp.sum()), abs=1e-4)
            assert r["tokens"][j] == len(ids) - 1
            assert r["mean"][j] == pytest.approx(r["sum"][j] / r["tokens"][j])
        assert r["pred"] == max(range(3), key=lambda j: r["sum"][j])
    means = classify(model, tokenizer, items, XNLI_TEMPLATE, norm="mean")
    assert [r["pred"] for r in means] == [max(range(3), key=lambda j: r["mean"][j]) for r in res]


def test_batched_generation_matches_unbatched(tiny, tokenizer):
    from polyprune.evaluate.translation import cut, generate
    model = tiny("llama")
    prompts = ["French: le chat</s>English:", "French: Le renard brun rapide saute.</s>English:", "a b"]
    one = [generate(model, tokenizer, [p], "</s>", max_new_tokens=6, batch_size=1)[0] for p in prompts]
    many = generate(model, tokenizer, prompts, "</s>", max_new_tokens=6, batch_size=3)
    assert many == one
    assert cut(" The cat\nFrench: x", "\n") == "The cat"


def test_lrp2_projection_shifts_content_tokens_only(tiny, tokenizer):
    from polyprune.evaluate.lrp2 import language_means, projected
    model = tiny("llama")
    mu_fr = language_means(model, tokenizer, ["Le chat dort.", "Le renard brun rapide saute."])
    mu_en = language_means(model, tokenizer, ["The cat sleeps.", "The quick brown fox jumps."])
    assert mu_fr.shape == (2, 32) and not torch.allclose(mu_fr, mu_en)
    ids = torch.tensor([encode(tokenizer, "Le chat dort.")])
    seen = {}
    def capture(module, args, kwargs):  # the input of layer 1 = the (projected) output of layer 0
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).clone()
    h = model.model.layers[1].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(input_ids=ids)
        base = seen["h"]
        with projected(model, tokenizer, mu_fr, mu_en, 0, 1):
            model(input_ids=ids)
        shifted = seen["h"]
        model(input_ids=ids)  # hooks removed: back to the dense model
        torch.testing.assert_close(seen["h"], base)
    finally:
        h.remove()
    diff = shifted - base
    torch.testing.assert_close(diff[0, 0], torch.zeros(32))  # <bos> untouched
    torch.testing.assert_close(diff[0, 1:], (mu_en[0] - mu_fr[0]).expand(ids.shape[1] - 1, -1), atol=1e-5, rtol=1e-5)
    # identical language vectors: the projection is the identity
    out = model(input_ids=ids).logits
    with projected(model, tokenizer, mu_en, mu_en, 0, 1):
        torch.testing.assert_close(model(input_ids=ids).logits, out)


CONTRACT = {"task", "target", "settings", "versions", "primary", "metrics", "per_example", "examples", "timings_s",
            "memory"}


def test_evaluate_result_contract(tiny, tokenizer, fake_data):
    model = tiny("llama")
    r = evaluate(model, tokenizer, "xnli", ["fr", "eng_Latn"], data_dir=fake_data, limit=6)
    assert CONTRACT <= set(r)
    assert r["primary"]["metric"] == "accuracy" and r["primary"]["higher_is_better"] is True
    assert set(r["primary"]["per_lang"]) == {"fra_Latn", "eng_Latn"}
    for code in ("fra_Latn", "eng_Latn"):
        per = r["per_example"][code]
        assert len(per) == 6 and set(per) <= {0, 1}
        assert r["primary"]["per_lang"][code] == pytest.approx(sum(per) / 6)
        assert [e["id"] for e in r["examples"][code]] == list(range(6))
    assert r["primary"]["average"] == pytest.approx(sum(r["primary"]["per_lang"].values()) / 2)
    assert r["settings"]["template"] == "{premise}, right? {Yes|Also|No}, {hypothesis}"
    ppl = evaluate(model, tokenizer, "perplexity", ["fr"], data_dir=fake_data, limit=5)
    m = ppl["metrics"]["fra_Latn"]
    assert ppl["primary"]["higher_is_better"] is False and m["ppl"] > 1 and m["tokens"] > 5
    assert sum(p["tokens"] for p in ppl["per_example"]["fra_Latn"]) == m["tokens"]
    rk = evaluate(model, tokenizer, "rankc", ["fr"], data_dir=fake_data, limit=6)
    assert 0 < rk["primary"]["per_lang"]["fra_Latn"] <= 1 and len(rk["per_example"]["fra_Latn"]) == 6
    mt = evaluate(model, tokenizer, "translation", ["fr"], data_dir=fake_data, limit=3, max_new_tokens=4)
    assert mt["metrics"]["fra_Latn"]["demo_line_ids"] and all(i >= 500 for i in mt["metrics"]["fra_Latn"]["demo_line_ids"])
    assert len(mt["per_example"]["fra_Latn"]) == 3 and "sacrebleu_signature" in mt["versions"]
    marc = evaluate(model, tokenizer, "marc", ["en"], data_dir=fake_data, limit=4, seed=3)
    ids = [e["id"] for e in marc["examples"]["eng_Latn"]]
    assert ids == sorted(ids) and len(ids) == 4
    lr = evaluate(model, tokenizer, "xnli-lrp2", ["fr"], data_dir=fake_data, limit=3, lrp2_samples=4, lrp2_dev_limit=3)
    assert lr["task"] == "xnli-lrp2" and lr["settings"]["lrp2"]["fra_Latn"]["layers"] == [0, 1]


def test_lm_eval_bridge_local_task(tiny, tokenizer, tmp_path):
    pytest.importorskip("lm_eval")
    from polyprune.evaluate.lm_eval_bridge import local_task_yaml
    docs = [{"q": "The cat", "choices": [" sat.", " ran away.", " is red."], "gold": i % 3} for i in range(4)]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    local_task_yaml(tmp_path / "tasks", "tiny_local_mc", data, "{{q}}", "{{choices}}", "{{gold}}", target_delimiter="")
    model = tiny("llama")
    r = evaluate(model, tokenizer, "lm-eval:tiny_local_mc", ["en"], include=str(tmp_path / "tasks"))
    per = r["per_example"]["eng_Latn"]
    assert len(per) == 4 and r["primary"]["metric"] == "accuracy"
    # lm-eval's scores are the in-memory model's log p(choice | question) (this tokenizer adds no <bos>)
    for d, e in zip(docs, r["examples"]["eng_Latn"]):
        ctx = encode(tokenizer, d["q"], start=False)
        scores = []
        for c in d["choices"]:
            full = encode(tokenizer, d["q"] + c, start=False)
            scores.append(float(sequence_logprobs(model, [full])[0][len(ctx) - 1:].sum()))
        assert e["scores"] == pytest.approx(scores, abs=1e-3)
        assert e["prediction"] == max(range(3), key=lambda j: scores[j])


def test_lm_eval_local_task_uses_its_folders_index_once_per_process(tmp_path):
    """A task defined in include=DIR is found through that folder's index alone (lm-eval's full index
    takes seconds); a group there needs the full one; an edited YAML is indexed again."""
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace
    from polyprune.evaluate.lm_eval_bridge import _is_plain_task, _manager, _task_manager, local_task_yaml
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"q": "a", "choices": [" b", " c"], "gold": 0}) + "\n")
    inc = tmp_path / "tasks"
    local_task_yaml(inc, "my_local", data, "{{q}}", "{{choices}}", "{{gold}}")
    (inc / "grp.yaml").write_text("group: my_group\ntask: [my_local]\n")
    tm = _manager(SimpleNamespace(options={"include": str(inc)}), "my_local")
    assert set(tm.all_tasks) == {"my_local", "my_group"}  # no bundled task: the folder's index only
    assert tm is _manager(SimpleNamespace(options={"include": str(inc)}), "my_local")
    assert _is_plain_task(tm, "my_local") and not _is_plain_task(tm, "my_group") and not _is_plain_task(tm, "x")
    (inc / "grp.yaml").write_text("group: my_group2\ntask: [my_local]\n")
    again = _task_manager(str(inc.resolve()), False)
    assert again is not tm and "my_group2" in again.all_tasks


def _cli(capsys, monkeypatch, *args):
    """Run the CLI in-process: (exit code, stderr)."""
    from polyprune.cli import main
    monkeypatch.setattr(sys, "argv", ["polyprune", *args])
    monkeypatch.delenv("POLYPRUNE_DATA_DIR", raising=False)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_cli_eval_and_bad_input(tiny_dir, fake_data, tmp_path, capsys, monkeypatch):
    model = str(tiny_dir("llama"))
    out = tmp_path / "res"
    code, err = _cli(capsys, monkeypatch, "eval", model, "--task", "xnli", "--lang", "fr,en", "--limit", "3",
                     "--data-dir", str(fake_data), "--out", str(out))
    assert code == 0, err
    res = json.loads((out / "xnli.json").read_text())
    assert CONTRACT <= set(res) and res["target"] == model
    bad = {
        "unknown task": (["--task", "nope", "--lang", "fr"], "unknown task"),
        "unknown language": (["--task", "xnli", "--lang", "klingon"], "klingon"),
        "not an XNLI language": (["--task", "xnli", "--lang", "jpn_Jpan"], "not an XNLI language"),
        "no local data": (["--task", "xnli", "--lang", "de"], "de.jsonl.gz"),
        "no MARC file": (["--task", "marc", "--lang", "fr"], "fr.jsonl.gz"),
        "bad limit": (["--task", "xnli", "--lang", "fr", "--limit", "0"], "limit"),
        "unknown option": (["--task", "xnli", "--lang", "fr", "-o", "k=3"], "task 'xnli' has no option 'k'"),
    }
    for why, (args, needle) in bad.items():
        bad_out = tmp_path / why.replace(" ", "_")
        code, err = _cli(capsys, monkeypatch, "eval", model, *args, "--data-dir", str(fake_data), "--out", str(bad_out))
        assert code == 2, (why, err)
        assert needle in err and len(err.strip().splitlines()) == 1, (why, err)
        assert not bad_out.exists(), why
    code, err = _cli(capsys, monkeypatch, "eval", model, "--task", "xnli", "--lang", "fr", "--data-dir", str(fake_data))
    assert code == 2 and "--out" in err
    notok = tmp_path / "no-tokenizer"
    from polyprune.testing import tiny_model
    tiny_model("llama").save_pretrained(notok)
    code, err = _cli(capsys, monkeypatch, "eval", str(notok), "--task", "xnli", "--lang", "fr", "--data-dir",
                     str(fake_data), "--out", str(tmp_path / "x"))
    assert code == 2 and "tokenizer" in err and not (tmp_path / "x").exists()


def test_empty_test_set_is_bad_input(tiny, tokenizer, fake_data, tmp_path):
    import shutil
    from polyprune.errors import UserError
    d = tmp_path / "data"
    shutil.copytree(fake_data, d)
    with gzip.open(d / "xnli" / "test" / "fr.jsonl.gz", "wt") as f:
        f.write("")
    with pytest.raises(UserError, match="empty test set"):
        evaluate(tiny("llama"), tokenizer, "xnli", ["fr"], data_dir=d)


TWO_EVALS = """
import sys
from polyprune.cli import main
model, out, *tasks = sys.argv[1:]
for task in tasks:  # one process, so lm-eval indexes its tasks once
    try:
        main(["eval", model, "--task", task, "--out", out])
        code = 0
    except SystemExit as e:
        code = e.code
    print(f"@@ exit {code}", flush=True)
"""


def test_lm_eval_offline_is_one_line_exit_2(tiny_dir, tmp_path):
    """A hub-data lm-eval task offline, and an unknown task: one line each, exit 2, no traceback."""
    pytest.importorskip("lm_eval")
    import os
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "POLYPRUNE_PROGRESS": "0"}
    cases = (("lm-eval:arc_easy", "allenai/ai2_arc comes from the Hugging Face hub, but HF_HUB_OFFLINE=1"),
             ("lm-eval:no_such_task_xyz", "'no_such_task_xyz' not found"))
    r = forked.run(["-c", TWO_EVALS, str(tiny_dir("llama")), str(tmp_path / "res"), *(t for t, _ in cases)],
                   env=env, merge=True)  # stdout and stderr in order
    assert r.returncode == 0, r.stdout
    runs, lines = [], []
    for line in r.stdout.splitlines():
        if line.startswith("@@ exit "):
            runs.append((line.removeprefix("@@ exit "), lines))
            lines = []
        elif line.strip():
            lines.append(line)
    assert len(runs) == len(cases), r.stdout
    for (task, what), (code, lines) in zip(cases, runs):
        assert code == "2" and len(lines) == 1 and what in lines[0], (task, code, lines)
