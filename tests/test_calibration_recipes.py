"""Calibration recipes: exact demonstration text, seeded determinism, no replacement, no overlap with
evaluation lines, equal shares in mixes, code windows, pads out of statistics, CLI audit and bad input."""
import json

import pytest
import torch

import polyprune as pp
from polyprune.calibration import build_calibration
from polyprune.data.flores import CALIBRATION_START
from polyprune.errors import UserError

LANGS = ("eng_Latn", "fra_Latn", "deu_Latn", "swh_Latn")


@pytest.fixture(scope="module")
def flores_dir(tmp_path_factory):
    """A tiny FLORES-like folder: 600 line-aligned lines per language, "<iso3> line <i>."."""
    root = tmp_path_factory.mktemp("data")
    d = root / "flores200" / "devtest"
    d.mkdir(parents=True)
    for code in LANGS:
        (d / f"{code}.txt").write_text("".join(f"{code[:3]} line {i}.\n" for i in range(600)), encoding="utf-8")
    return root


def build(name, tok, flores_dir, **kw):
    args = dict(langs=["fr"], target_lang=None, k=2, nsamples=3, seqlen=512, seed=0, data_dir=flores_dir)
    args.update(kw)
    return build_calibration(name, tok, **args)


def bos_tokenizer():
    from tokenizers.processors import TemplateProcessing
    from polyprune.testing import tiny_tokenizer
    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return tok


def test_translation_exact_text_and_tokens(tokenizer, flores_dir):
    cal = build("translation", tokenizer, flores_dir)
    assert cal.recipe == "translation" and len(cal) == 3
    s = cal.samples[0]
    a, b = s.source["lines"]
    assert s.text == (f"French: fra line {a}.</s>English: eng line {a}.</s>"
                      f"French: fra line {b}.</s>English: eng line {b}.</s>")
    assert s.langs == ("fra_Latn", "eng_Latn") and s.source["dataset"] == "flores200/devtest"
    assert s.input_ids.tolist() == tokenizer(s.text)["input_ids"]  # no padding, no extra tokens
    assert s.attention_mask.tolist() == [1] * len(s.input_ids)
    assert cal.meta["sep"] == "</s>" and cal.meta["target_lang"] == "eng_Latn"
    # explicit separator and target language
    s2 = build("translation", tokenizer, flores_dir, target_lang="German", sep="\\n", nsamples=1, k=1).samples[0]
    (i,) = s2.source["lines"]
    assert s2.text == f"French: fra line {i}.\nGerman: deu line {i}.\n"


def test_translation_seeded_without_replacement_and_disjoint(tokenizer, flores_dir):
    cal = build("translation", tokenizer, flores_dir, nsamples=25, k=4, seed=3)
    again = build("translation", tokenizer, flores_dir, nsamples=25, k=4, seed=3)
    other = build("translation", tokenizer, flores_dir, nsamples=25, k=4, seed=4)
    lines = [i for s in cal for i in s.source["lines"]]
    assert lines == [i for s in again for i in s.source["lines"]]
    assert [s.text for s in cal] == [s.text for s in again]
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(cal, again))
    assert lines != [i for s in other for i in s.source["lines"]]
    assert len(lines) == 100 and len(set(lines)) == 100  # without replacement
    assert min(lines) >= CALIBRATION_START and max(lines) < 600  # never an evaluation line
    assert lines != sorted(lines)  # actually random, not consecutive lines (the reference's no-op seeding)


def test_too_few_sentences(tokenizer, flores_dir):
    with pytest.raises(UserError, match=r"--nsamples 26 × --k 4 = 104 distinct lines needed, 100 available"):
        build("translation", tokenizer, flores_dir, nsamples=26, k=4)
    build("monolingual", tokenizer, flores_dir, nsamples=50, k=2)  # exactly 100 lines is fine


def test_translation_bad_languages(tokenizer, flores_dir):
    with pytest.raises(UserError, match="unknown language 'frx'"):
        build("translation", tokenizer, flores_dir, langs=["frx"])
    with pytest.raises(UserError, match="two languages"):
        build("translation", tokenizer, flores_dir, langs=["en"])
    with pytest.raises(UserError, match="needs a source language"):
        build("translation", tokenizer, flores_dir, langs=[])
    with pytest.raises(UserError, match="cat_Latn.txt not found"):
        build("translation", tokenizer, flores_dir, langs=["ca"])
    with pytest.raises(UserError, match="has no option 'shots'"):
        build("translation", tokenizer, flores_dir, shots=3)


def test_monolingual_and_bos(tokenizer, flores_dir):
    s = build("monolingual", tokenizer, flores_dir, langs=["sw"], k=3, nsamples=1).samples[0]
    i, j, k = s.source["lines"]
    assert s.text == f"Swahili: swh line {i}.</s>Swahili: swh line {j}.</s>Swahili: swh line {k}.</s>"
    assert s.langs == ("swh_Latn",)
    tok = bos_tokenizer()
    s = build("monolingual", tok, flores_dir, langs=["sw"], k=3, nsamples=1).samples[0]
    assert s.input_ids[0].item() == 2 and s.text.startswith("Swahili: ") and "</s>" not in s.text
    assert s.text.count("\n") == 3  # a tokenizer that adds <bos> gets newline separators
    short = build("monolingual", tok, flores_dir, langs=["sw"], k=3, nsamples=1, seqlen=5).samples[0]
    assert short.input_ids.tolist() == s.input_ids[:5].tolist() and short.source["truncated_to"] == 5


def test_text_windows(tokenizer, flores_dir):
    cal = build("text", tokenizer, flores_dir, langs=["sw", "fr"], nsamples=4, seqlen=16)
    assert len(cal) == 8 and all(s.input_ids.numel() == 16 for s in cal)
    assert [s.langs for s in cal] == [("swh_Latn",)] * 4 + [("fra_Latn",)] * 4
    assert all(CALIBRATION_START <= i < 600 for x in cal for i in x.source["lines"])
    for x in cal:  # the audit's line ids are the lines the window covers
        lines, iso = x.source["lines"], x.langs[0][:3]
        assert lines == list(range(lines[0], lines[-1] + 1)) and len(lines) >= 2
        assert all(f"{iso} line {i}." in x.text for i in lines[1:-1])
        assert f"{iso} line {lines[-1] + 1}" not in x.text and f"line {lines[0] - 1}." not in x.text
    again = build("text", tokenizer, flores_dir, langs=["sw", "fr"], nsamples=4, seqlen=16)
    assert all(torch.equal(x.input_ids, y.input_ids) for x, y in zip(cal, again))
    with_bos = build("text", bos_tokenizer(), flores_dir, langs=["sw"], nsamples=2, seqlen=16)
    assert all(x.input_ids[0].item() == 2 and x.input_ids.numel() == 16 for x in with_bos)
    with pytest.raises(UserError, match="smaller --seqlen"):
        build("text", tokenizer, flores_dir, langs=["sw"], nsamples=1, seqlen=10 ** 6)


def test_text_from_local_files(tokenizer, flores_dir, tmp_path):
    import gzip
    p = tmp_path / "swh.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        for i in range(50):
            f.write(json.dumps({"body": f"record {i} " * 5}) + "\n")
    cal = build("text", tokenizer, flores_dir, langs=["sw"], nsamples=3, seqlen=12,
                text_file=str(tmp_path / "{iso3}.jsonl.gz"), text_field="body")
    assert all("record" in s.text for s in cal) and cal.samples[0].source["file"] == str(p)
    assert all(0 <= i < 50 for s in cal for i in s.source["lines"])
    with pytest.raises(UserError, match="no field 'text'"):
        build("text", tokenizer, flores_dir, langs=["sw"], text_file=str(p))
    with pytest.raises(UserError, match="not found"):
        build("text", tokenizer, flores_dir, langs=["sw"], text_file=str(tmp_path / "nope.txt"))


def test_mix_equal_shares(tokenizer, flores_dir):
    cal = build("mix", tokenizer, flores_dir, langs=["de", "fr", "sw"], nsamples=6, seqlen=16)
    counts = cal.token_counts()["target"]
    assert counts == {"deu_Latn": 32, "fra_Latn": 32, "swh_Latn": 32}
    assert [s.langs[0] for s in cal] == ["deu_Latn"] * 2 + ["fra_Latn"] * 2 + ["swh_Latn"] * 2
    # by tokens: variable-length demonstrations, exactly the same number of tokens per source language
    cal = build("mix", tokenizer, flores_dir, langs=["de", "sw"], nsamples=6, k=3, base="translation", by="tokens")
    per = {}
    for s in cal:
        per[s.langs[0]] = per.get(s.langs[0], 0) + s.n_tokens
    assert per["deu_Latn"] == per["swh_Latn"] > 0
    by_samples = build("mix", tokenizer, flores_dir, langs=["de", "sw"], nsamples=6, k=3, base="translation")
    assert sum(s.langs[0] == "deu_Latn" for s in by_samples) == 3
    with pytest.raises(UserError, match="at least two languages"):
        build("mix", tokenizer, flores_dir, langs=["de"])
    with pytest.raises(UserError, match="by='words'"):
        build("mix", tokenizer, flores_dir, langs=["de", "fr"], by="words")


def test_code_windows(tokenizer, tmp_path):
    d = tmp_path / "code"
    (d / "pkg").mkdir(parents=True)
    (d / "pkg" / "a.py").write_text("def alpha(x):\n    return x + 1\n" * 20)
    (d / "b.py").write_text("import os\nprint(os.sep)\n")  # short: windows continue into the next file
    (d / "tests").mkdir()
    (d / "tests" / "t.py").write_text("SKIPPED = True\n" * 100)
    cal = build_calibration("code", tokenizer, langs=[], target_lang=None, nsamples=5, seqlen=20, seed=1,
                            code_dir=str(d))
    assert len(cal) == 5 and all(s.input_ids.numel() == 20 and s.langs == ("code",) for s in cal)
    assert all("SKIPPED" not in s.text for s in cal)
    assert {f for s in cal for f in s.source["files"]} <= {"b.py", "pkg/a.py"}
    again = build_calibration("code", tokenizer, langs=[], nsamples=5, seqlen=20, seed=1, code_dir=str(d))
    assert [s.text for s in cal] == [s.text for s in again]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="code corpus is empty"):
        build_calibration("code", tokenizer, nsamples=2, seqlen=8, code_dir=str(empty))


def test_code_default_is_the_stdlib(tokenizer):
    cal = build_calibration("code", tokenizer, nsamples=2, seqlen=32, seed=0)
    again = build_calibration("code", tokenizer, nsamples=2, seqlen=32, seed=0)
    assert cal.samples[0].source["dataset"] == "python-stdlib"
    assert [s.text for s in cal] == [s.text for s in again] and all(s.source["files"] for s in cal)


def test_padded_batch_gives_the_same_statistics(tiny, tokenizer, flores_dir):
    """Variable-length demonstrations padded into one batch: pads never reach the statistics."""
    from polyprune.calibrations._util import truncate
    cal = build("translation", tokenizer, flores_dir, nsamples=4, k=2)
    cal.samples = [truncate(s, s.n_tokens - 5 * i) for i, s in enumerate(cal.samples)]
    lengths = [s.input_ids.numel() for s in cal]
    assert len(set(lengths)) > 1
    L = max(lengths)
    ids = torch.zeros(len(cal), L, dtype=torch.long)
    am = torch.zeros(len(cal), L, dtype=torch.long)
    for r, s in enumerate(cal):  # right padding with the pad id 0
        ids[r, :lengths[r]] = s.input_ids
        am[r, :lengths[r]] = 1
    padded = [{"input_ids": ids, "attention_mask": am}]
    m1 = pp.prune(tiny("llama"), cal, "wanda", 0.5, keep_stats=True)
    m2 = pp.prune(tiny("llama"), padded, "wanda", 0.5, keep_stats=True)
    m3 = pp.prune(tiny("llama"), padded, "wanda", 0.5, keep_stats=True, count_pads=True)
    assert set(m1.masks) == set(m2.masks) and all(torch.equal(m1.masks[k], m2.masks[k]) for k in m1.masks)
    for name in m1.stats:
        for kind, t in m1.stats[name]["target"].items():
            torch.testing.assert_close(t, m2.stats[name]["target"][kind], rtol=1e-5, atol=1e-6)
    assert m1.record["calibration"]["tokens"] == m2.record["calibration"]["tokens"] == sum(lengths)
    # counting pads (the references' behaviour) does change the statistics (after layer 0: the pad
    # embedding row is zero in the tiny model)
    assert any(not torch.allclose(t, m3.stats[n]["target"][k]) for n in m1.stats
               for k, t in m1.stats[n]["target"].items())


# ---------------------------------------------------------------- CLI: audit files and bad input

def invoke(*args):
    """The CLI in-process (typer's CliRunner); bad input surfaces as the UserError that ``main`` prints."""
    from typer.testing import CliRunner
    import polyprune.commands  # noqa: F401  (registers the sub-commands)
    from polyprune.cli import app
    return CliRunner().invoke(app, [str(a) for a in args], env={"POLYPRUNE_PROGRESS": "0"})


def test_cli_translation_run_audit(tiny_dir, flores_dir, tmp_path):
    out = tmp_path / "run"
    r = invoke("prune", "--model", tiny_dir("llama"), "--method", "wanda-contrastive", "--calibration", "translation",
               "--lang", "fra_Latn", "--target-lang", "eng_Latn", "--k", "2", "--nsamples", "3", "--contrast", "code",
               "--seqlen", "24", "--data-dir", flores_dir, "--out", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "calibration.jsonl").read_text(encoding="utf-8").splitlines()]
    target = [x for x in rows if x["set"] == "target"]
    contrast = [x for x in rows if x["set"] == "contrast"]
    assert len(target) == 3 and len(contrast) == 3
    t0 = target[0]
    a, b = t0["source"]["lines"]
    assert t0["text"] == (f"French: fra line {a}.</s>English: eng line {a}.</s>"
                          f"French: fra line {b}.</s>English: eng line {b}.</s>")
    assert t0["langs"] == ["fra_Latn", "eng_Latn"] and all(x["langs"] == ["code"] for x in contrast)
    assert all(x["source"]["dataset"] == "python-stdlib" and x["source"]["files"] for x in contrast)
    rec = json.loads((out / "record.json").read_text())
    counts = rec["calibration"]["tokens_per_set_and_language"]
    n_target = sum(x["n_tokens"] for x in target)
    assert counts["target"] == {"fra_Latn": n_target, "eng_Latn": n_target}
    assert counts["contrast"] == {"code": 3 * 24}
    assert rec["calibration"]["tokens"] == n_target + 3 * 24


@pytest.mark.parametrize("args,msg", [
    (["--calibration", "translation", "--lang", "klingon"], "unknown language 'klingon'"),
    (["--calibration", "translation", "--lang", "cat_Latn"], "cat_Latn.txt not found"),
    (["--calibration", "translation", "--lang", "fr", "--nsamples", "26", "--k", "4"],
     "too few sentences for translation fra_Latn→eng_Latn: --nsamples 26 × --k 4 = 104 distinct lines needed, "
     "100 available: lower --nsamples or --k"),
    (["--calibration", "monolingual", "--lang", "fr", "--nsamples", "4", "--contrast", "code"], "does not use one"),
    (["--method", "magnitude", "--contrast", "code"], "does not use one"),
    (["--calibration", "text", "--lang", "sw", "--seqlen", "100000"], "smaller --seqlen"),
])
def test_cli_bad_input_nothing_written(tiny_dir, flores_dir, tmp_path, args, msg):
    out = tmp_path / "run"
    r = invoke("prune", "--model", tiny_dir("llama"), *(["--method", "wanda"] if "--method" not in args else []),
               *args, "--data-dir", flores_dir, "--out", out)
    assert isinstance(r.exception, UserError), r.output
    assert msg in str(r.exception) and "\n" not in str(r.exception)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_empty_code_corpus_from_config(tokenizer, tmp_path):
    from polyprune.config import CalibrationConfig
    from polyprune.pipeline import calibration_from_config
    empty = tmp_path / "empty"
    empty.mkdir()
    cc = CalibrationConfig(recipe="code", nsamples=2, seqlen=8, options={"code_dir": str(empty)})
    with pytest.raises(UserError, match="code corpus is empty"):
        calibration_from_config(cc, tokenizer, 0, "wanda")


def test_hub_streaming_limits_and_errors(monkeypatch):
    """Hub text/code sources: stop at the document / character limit; a missing field names its option."""
    import datasets

    from polyprune.data.code import load_code
    from polyprune.data.hub import stream_field
    from polyprune.errors import UserError
    recs = [{"text": "abcd", "content": f"x = {i}\n"} for i in range(10)]
    monkeypatch.setattr("polyprune.data.hub.require_hub", lambda *a: None)  # the hub is mocked here
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: iter(recs))
    assert stream_field("d", None, "train", "text", max_chars=10) == ["abcd"] * 3
    assert load_code(code_dataset="d", max_files=4).read("3") == "x = 3\n"
    with pytest.raises(UserError, match="set option code_field"):
        load_code(code_dataset="d", code_field="body")

    def offline(*a, **k):
        raise ConnectionError("offline")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="ConnectionError.*text_file"):
        from polyprune.data.text import read_hub_text
        read_hub_text("d", None, "train", "text", 0, 100)
