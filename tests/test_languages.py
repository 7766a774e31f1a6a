"""Language registry, FLORES split, data folder resolution, prompt formats, `polyprune data languages`."""
from pathlib import Path

import pytest

from polyprune.data import resolve_data_dir
from polyprune.data import flores
from polyprune.errors import UserError
from polyprune.languages import LANGUAGES, MARC_CODES, XNLI_CODES, get_language, resolve_langs
from polyprune.prompts import (MONOLINGUAL_TEMPLATE, monolingual_demos, separator, special_prefix,
                               translation_demos, translation_prompt)

FLORES_37 = ("amh_Ethi arb_Arab ben_Beng bul_Cyrl ces_Latn deu_Latn ell_Grek eng_Latn fin_Latn fra_Latn hau_Latn "
             "heb_Hebr hin_Deva ind_Latn ita_Latn jpn_Jpan kat_Geor kor_Hang mar_Deva nld_Latn pes_Arab pol_Latn "
             "por_Latn rus_Cyrl spa_Latn swe_Latn swh_Latn tam_Taml tel_Telu tha_Thai tur_Latn ukr_Cyrl urd_Arab "
             "vie_Latn yor_Latn zho_Hans zho_Hant").split()


def make_flores(root: Path, langs=("eng_Latn", "fra_Latn", "deu_Latn", "swh_Latn"), n=600) -> Path:
    d = root / "flores200" / "devtest"
    d.mkdir(parents=True, exist_ok=True)
    for code in langs:
        (d / f"{code}.txt").write_text("".join(f"{code[:3]} line {i}.\n" for i in range(n)), encoding="utf-8")
    return root


@pytest.mark.parametrize("key,code", [
    ("fra_Latn", "fra_Latn"), ("fr", "fra_Latn"), ("fra", "fra_Latn"), ("French", "fra_Latn"), ("FRENCH", "fra_Latn"),
    ("  sw ", "swh_Latn"), ("swa", "swh_Latn"), ("Swahili", "swh_Latn"), ("zh", "zho_Hans"), ("zh-Hans", "zho_Hans"),
    ("zh-Hant", "zho_Hant"), ("cmn_Hans", "zho_Hans"), ("ar", "arb_Arab"), ("ara", "arb_Arab"), ("fa", "pes_Arab"),
    ("ne", "npi_Deva"), ("ig", "ibo_Latn"), ("ENG_LATN", "eng_Latn")])
def test_get_language_accepts_codes_and_names(key, code):
    assert get_language(key).code == code


def test_language_fields():
    fr = get_language("fr")
    assert (fr.code, fr.name, fr.iso1, fr.iso3, fr.xnli, fr.marc) == ("fra_Latn", "French", "fr", "fra", "fr", "fr")
    sw = get_language("sw")
    assert (sw.xnli, sw.marc) == ("sw", None)
    assert get_language("ja").marc == "ja" and get_language("ja").xnli is None
    assert get_language("zh-Hant").xnli is None  # XNLI/MARC Chinese is Simplified
    with pytest.raises(Exception):
        fr.name = "x"  # frozen


def test_registry_covers_flores_xnli_marc_and_bloom():
    assert set(FLORES_37) <= set(LANGUAGES)
    assert sorted(x.xnli for x in LANGUAGES.values() if x.xnli) == sorted(XNLI_CODES)
    assert sorted(x.marc for x in LANGUAGES.values() if x.marc) == sorted(MARC_CODES)
    for iso in ("ta", "te", "ur", "ne", "mr", "gu", "yo", "ig", "ca", "eu", "vi", "id", "bn"):
        assert get_language(iso).iso1 == iso
    names = [x.name.lower() for x in LANGUAGES.values()]
    assert len(names) == len(set(names))


def test_registry_matches_local_flores(data_dir):
    assert sorted(p.stem for p in (data_dir / "flores200" / "devtest").glob("*.txt")) == sorted(FLORES_37)


@pytest.mark.parametrize("bad,hint", [("frnch", "fra_Latn (French)"), ("Swahilli", "swh_Latn"),
                                      ("xx", "polyprune data")])
def test_unknown_language_suggests_close_matches(bad, hint):
    with pytest.raises(UserError) as e:
        get_language(bad)
    msg = str(e.value)
    assert repr(bad) in msg and hint in msg and "\n" not in msg


def test_resolve_langs_splits_commas_and_dedupes():
    assert [x.code for x in resolve_langs(["de,en", "fr", "deu_Latn"])] == ["deu_Latn", "eng_Latn", "fra_Latn"]
    assert resolve_langs(None) == [] and [x.code for x in resolve_langs("sw")] == ["swh_Latn"]


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("POLYPRUNE_DATA_DIR", raising=False)
    monkeypatch.setattr("polyprune.data.local_candidates", lambda: [tmp_path / "none", tmp_path / "local"])
    assert resolve_data_dir(None) is None  # no local folder: the hub
    (tmp_path / "local" / "xnli").mkdir(parents=True)
    assert resolve_data_dir(None) == (tmp_path / "local").resolve()  # a local ../shared/data-style folder
    assert resolve_data_dir("hub") is None  # the hub on request
    monkeypatch.setenv("POLYPRUNE_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    other = tmp_path / "x"
    other.mkdir()
    assert resolve_data_dir(other) == other  # the argument wins over the environment
    with pytest.raises(UserError, match="not a folder"):
        resolve_data_dir(tmp_path / "missing")


def test_flores_split_is_fixed_and_disjoint(tmp_path):
    root = make_flores(tmp_path, n=1012)
    cal = flores.load_flores("fr", "calibration", root)
    ev = flores.load_flores("French", "evaluation", root)
    assert flores.CALIBRATION_START == 500
    assert [i for i, _ in cal] == list(range(500, 1012)) and [i for i, _ in ev] == list(range(500))
    assert cal[0] == (500, "fra line 500.") and ev[-1] == (499, "fra line 499.")
    flores.check_disjoint([i for i, _ in cal], [i for i, _ in ev])
    with pytest.raises(UserError, match=r"2 FLORES line\(s\).*\(3, 700\)"):
        flores.check_disjoint([3, 700, 800], [700, 3, 1])
    par = flores.load_parallel("fr", "en", "calibration", root)
    assert par[0] == (500, "fra line 500.", "eng line 500.") and len(par) == 512
    with pytest.raises(UserError, match="unknown FLORES split"):
        flores.load_flores("fr", "dev", root)


def test_real_flores_split(data_dir):
    ev = flores.load_flores("swh_Latn", "evaluation", data_dir)
    cal = flores.load_flores("swh_Latn", "calibration", data_dir)
    assert len(ev) == 500 and len(cal) == 512 and ev[0][1] and cal[0][1]
    assert not {i for i, _ in ev} & {i for i, _ in cal}


def test_missing_local_language_names_the_file(tmp_path):
    root = make_flores(tmp_path)
    with pytest.raises(UserError) as e:
        flores.load_flores("cat_Latn", "calibration", root)
    assert str(root / "flores200" / "devtest" / "cat_Latn.txt") in str(e.value)


def test_prompt_strings_exact(tokenizer):
    sep = separator(tokenizer)
    assert sep == "</s>"  # the tiny tokenizer's eos, one token, no <bos> added
    pairs = [("Bonjour.", "Hello."), ("Merci.", "Thanks.")]
    assert translation_demos(pairs, "fr", "en", sep) == \
        "French: Bonjour.</s>English: Hello.</s>French: Merci.</s>English: Thanks.</s>"
    assert translation_prompt(pairs[:1], "Oui.", "fra_Latn", "eng_Latn", "\n") == \
        "French: Bonjour.\nEnglish: Hello.\nFrench: Oui.\nEnglish:"
    assert translation_prompt([], "Ja.", "de", "en", "</s>") == "German: Ja.</s>English:"
    assert monolingual_demos(["Un.", "Deux."], "fr", "</s>") == "French: Un.</s>French: Deux.</s>"
    assert MONOLINGUAL_TEMPLATE.format(name="X", text="t", sep="|") == "X: t|"
    custom = "<{src_name}> {src} = <{tgt_name}> {tgt}{sep}"
    assert translation_demos(pairs[:1], "fr", "en", "\n", custom) == "<French> Bonjour. = <English> Hello.\n"
    assert translation_prompt(pairs[:1], "Oui.", "fr", "en", "\n", custom) == \
        "<French> Bonjour. = <English> Hello.\n<French> Oui. = <English>"


def _bos_tokenizer():
    from tokenizers.processors import TemplateProcessing
    from polyprune.testing import tiny_tokenizer
    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return tok


def test_separator_rules(tokenizer):
    assert separator(tokenizer, "\\n") == "\n" and separator(tokenizer, " | ") == " | "
    bos = _bos_tokenizer()
    assert special_prefix(bos) == [2] and special_prefix(tokenizer) == []
    assert separator(bos) == "\n"  # Llama/Gemma style: the tokenizer adds <bos> itself
    tokenizer_name = tokenizer.name_or_path
    try:
        tokenizer.name_or_path = "bigscience/bloom-560m"
        assert separator(tokenizer) == "\n"
    finally:
        tokenizer.name_or_path = tokenizer_name


def test_cli_data_languages(tmp_path):
    from typer.testing import CliRunner
    import polyprune.commands  # noqa: F401
    from polyprune.cli import app
    root = make_flores(tmp_path, langs=("fra_Latn", "swh_Latn"))
    (root / "xnli" / "test").mkdir(parents=True)
    (root / "xnli" / "test" / "fr.jsonl.gz").write_bytes(b"")
    (root / "marc").mkdir()
    (root / "marc" / "ja.jsonl.gz").write_bytes(b"")
    r = CliRunner().invoke(app, ["data", "languages", "--data-dir", str(root)])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split() for line in r.output.splitlines()[1:-1]}
    assert set(rows) == {"fra_Latn", "swh_Latn", "jpn_Jpan"}
    assert rows["fra_Latn"][-3:] == ["yes", "fr", "-"] and rows["jpn_Jpan"][-3:] == ["-", "-", "ja"]
    assert rows["swh_Latn"][-3:] == ["yes", "-", "-"]
    assert "3 languages in" in r.output.splitlines()[-1]


def test_offline_hub_fails_fast_with_one_line(tmp_path):
    """No local data and HF_HUB_OFFLINE=1: hub-bound commands stop with exactly one line (no
    retries, nothing printed twice), exit 2, nothing written, and before any model is loaded (a
    missing model folder is not even noticed), which is what keeps them within seconds."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "POLYPRUNE_DATA_DIR": "hub", "POLYPRUNE_PROGRESS": "1"}
    model = str(tmp_path / "no-such-model")
    cal = ["prune", "--model", model, "--calibration", "translation", "--lang", "fra", "--target-lang", "eng",
           "--nsamples", "2", "--seqlen", "16", "--out", str(tmp_path / "r")]
    ev = ["eval", model, "--task", "perplexity", "--lang", "fra", "--limit", "2", "--out", str(tmp_path / "e")]
    for args, what in ((cal, "recipe 'translation'"), (ev, "FLORES+ (task perplexity)")):
        r = subprocess.run([sys.executable, "-m", "polyprune", *args], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
        lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
        assert r.returncode == 2, r.stdout + r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and what in lines[0], lines
        assert "HF_HUB_OFFLINE=1" in lines[0] and "--data-dir" in lines[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "e" / "perplexity.json").exists()


def test_unreachable_hub_is_detected_without_retries(monkeypatch):
    from polyprune.data import hub
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_reachable", {})
    for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    # a port nothing listens on: refused at once
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UserError, match="unreachable.*--data-dir"):
        hub.require_hub("FLORES+", "give --data-dir")
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried"))
    with pytest.raises(UserError, match="unreachable"):
        hub.stream_field("d", None, "train", "text")
