"""Streaming layers from a safetensors checkpoint gives the in-memory results bit for bit."""
import json

import pytest
import torch

import polyprune as pp
from polyprune.errors import UserError
from polyprune.masks import load_masks
from polyprune.stream import (Checkpoint, SafetensorsWriter, check_target, parse_size, return_freed_memory,
                              save_tensors, stream_prune)


@pytest.mark.parametrize("family,method,pattern", [("gemma3", "wanda", "unstructured"), ("gpt2", "sparsegpt", "2:4"),
                                                   ("llama", "gptq", "unstructured"), ("opt", "magnitude", "unstructured")])
def test_streaming_equals_in_memory(tiny, tiny_dir, calib_ids, tmp_path, family, method, pattern):
    opts = {"group_size": 16} if method == "gptq" else {}
    result = pp.prune(tiny(family), calib_ids, method, 0.5, pattern, method_options=opts)
    ref = result.masks
    dense_sd = tiny(family).state_dict()
    model = tiny(family)
    pp.prune(model, calib_ids, method, 0.5, pattern, method_options=opts)
    rec = stream_prune(tiny_dir(family), calib_ids, tmp_path / "s", method, 0.5, pattern, method_options=opts)
    got = load_masks(tmp_path / "s")
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert rec["achieved_sparsity"] == result.record["achieved_sparsity"]
    ck = Checkpoint(tmp_path / "s" / "model")
    sd = model.state_dict()
    assert all(torch.equal(ck.load(k), sd[k]) for k in ck.keys())  # every tensor, pruned or copied
    assert any(not torch.equal(ck.load(k), dense_sd[k]) for k in ref)  # … and the layers did change
    index = json.loads((tmp_path / "s" / "model" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ck.keys())
    if method == "gptq":
        from polyprune.formats import load_method_info
        info = load_method_info(tmp_path / "s")
        assert set(info) == set(result.info) and all(torch.equal(info[k]["scale"], result.info[k]["scale"])
                                                     for k in info)
    reloaded = pp.load_model(str(tmp_path / "s" / "model"))[0]  # a normal HF folder
    assert torch.equal(reloaded.state_dict()[next(iter(ref))], sd[next(iter(ref))])


def test_bf16_activations_keep_fp32_statistics(tiny_dir, calib_ids, tmp_path):
    rec = stream_prune(tiny_dir("gemma3"), calib_ids, tmp_path / "b", "wanda", 0.5, activation_dtype="bfloat16")
    ref = pp.prune(pp.load_model(str(tiny_dir("gemma3")))[0], calib_ids, "wanda", 0.5).masks
    same_run = pp.prune(pp.load_model(str(tiny_dir("gemma3")))[0], calib_ids, "wanda", 0.5,
                        activation_dtype=torch.bfloat16, keep_stats=True)
    same = same_run.masks
    got = load_masks(tmp_path / "b")
    agree = sum(int((got[k] == ref[k]).sum()) for k in ref) / sum(v.numel() for v in ref.values())
    assert rec["streaming"]["activation_dtype"] == "bfloat16"
    assert rec["achieved_sparsity"] == 0.5
    # the bf16 buffers are really used: the in-memory bf16 run bit for bit, not the fp32 one
    assert all(torch.equal(got[k], same[k]) for k in same)
    assert 0.99 < agree < 1.0  # measured 0.9983: bf16-rounded layer inputs move a few borderline weights
    assert {t.dtype for d in same_run.stats.values() for s in d.values() for t in s.values()} == {torch.float32}


def test_writer_round_trip_and_no_leftovers(tmp_path):
    from safetensors.torch import load_file
    w = SafetensorsWriter(tmp_path / "x.safetensors", {"k": "v"})
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([True, False]),
               "c": torch.ones(3, dtype=torch.bfloat16), "d": torch.zeros(0)}
    for k, v in tensors.items():
        w.add(k, v)
    w.close()
    back = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_save_tensors_writes_what_safetensors_reads(tmp_path):
    """Header first, then each tensor's bytes from its own storage (nothing assembled in memory);
    ``dtypes`` converts one tensor at a time; the header agrees with safetensors' own reader."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(5, 7, generator=g), "m": torch.rand(4, generator=g) > 0.5,
               "h": torch.randn(3, generator=g).to(torch.bfloat16), "e": torch.zeros(0, 2),
               "t": torch.randn(4, 6, generator=g).t()}  # not contiguous
    n = save_tensors(tmp_path / "a.safetensors", tensors, {"format": "pt"}, {"w": torch.float16})
    back = load_file(str(tmp_path / "a.safetensors"))
    assert back["w"].dtype == torch.float16 and torch.equal(back["w"], tensors["w"].half())
    assert all(torch.equal(back[k], tensors[k]) for k in ("m", "h", "e", "t"))
    assert n == 5 * 7 * 2 + 4 + 3 * 2 + 0 + 24 * 4
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    (tmp_path / "ck").mkdir()
    (tmp_path / "a.safetensors").rename(tmp_path / "ck" / "model.safetensors")
    ckpt = Checkpoint(tmp_path / "ck")  # our own header reader sees the same offsets
    assert torch.equal(ckpt.load("t"), tensors["t"]) and ckpt.dtype("w") == torch.float16


def test_return_freed_memory_applies_on_glibc():
    import platform
    assert return_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_bad_offload_targets(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        check_target(tmp_path / "file" / "out", 0)
    import polyprune.stream as st
    monkeypatch.setattr(st.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
    with pytest.raises(UserError, match="not enough disk space"):
        check_target(tmp_path / "out", 1 << 30)
    assert parse_size("1.5GB") == int(1.5 * 2 ** 30) and parse_size("512MB") == 512 << 20
    with pytest.raises(UserError, match="memory size"):
        parse_size("lots")


def test_cli_offload_and_bad_input(tiny_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner
    from polyprune import commands  # noqa: F401
    from polyprune.cli import app
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(["The quick brown fox jumps over the lazy dog."] * 40))
    args = ["prune", "--model", str(tiny_dir("llama")), "--method", "wanda", "--calibration-file", str(cal),
            "--nsamples", "2", "--seqlen", "16"]
    r = CliRunner().invoke(app, args + ["--max-memory", "1KB", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "model" / "model.safetensors.index.json").is_file()
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["streaming"]["activation_dtype"] == "float32" and rec["achieved_sparsity"] == 0.5
    import polyprune.stream as st
    monkeypatch.setattr(st.shutil, "disk_usage", lambda p: type("U", (), {"free": 1024})())
    r = CliRunner().invoke(app, args + ["--offload", "--out", str(tmp_path / "run2")])
    assert isinstance(r.exception, UserError) and "disk space" in str(r.exception)
    assert not (tmp_path / "run2").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".run2")]
    monkeypatch.undo()
    r = CliRunner().invoke(app, args + ["--offload", "--keep-stats", "--out", str(tmp_path / "run3")])
    assert isinstance(r.exception, UserError) and "--keep-stats needs the whole model" in str(r.exception)
    assert not (tmp_path / "run3").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".run3")]


def test_allocator_tuning_is_opt_in(tiny_dir, calib_ids, tmp_path, monkeypatch):
    """The glibc setting is process-wide: the library leaves it alone unless asked (the CLI asks)."""
    import polyprune.stream as stream
    calls = []
    monkeypatch.setattr(stream, "return_freed_memory", lambda *a: calls.append(a) or True)
    stream_prune(tiny_dir("llama"), calib_ids, tmp_path / "a", "magnitude", 0.5)
    assert calls == []
    stream_prune(tiny_dir("llama"), calib_ids, tmp_path / "b", "magnitude", 0.5, tune_allocator=True)
    assert calls == [()]
