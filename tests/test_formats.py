"""compressed-tensors export: round trips through the library, sizes, configs, bad input."""
import json

import pytest
import torch

from polyprune.errors import UserError
from polyprune.formats import bitmask_compress, bitmask_decompress, decompress, export_compressed, sparse24_compress
from polyprune.run import load_run_or_model


def make_run(tiny_dir, tmp_path, name, method, pattern="unstructured", **opts):
    from polyprune.config import validate_config
    from polyprune.pipeline import run_prune
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(["Le renard brun rapide saute par-dessus le chien paresseux."] * 40))
    cfg = validate_config({"model": str(tiny_dir("llama")), "method": method, "pattern": pattern,
                           "method_options": opts, "calibration": {"file": str(cal), "nsamples": 2, "seqlen": 16}})
    return run_prune(cfg, tmp_path / name)


def dense_of(run):
    model = load_run_or_model(str(run))[0]
    return model.state_dict()


@pytest.mark.parametrize("method,pattern,fmt,opts", [
    ("sparsegpt", "unstructured", "sparse-bitmask", {}),
    ("wanda", "2:4", "sparse-24-bitmask", {}),
    ("gptq", "unstructured", "pack-quantized", {"bits": 4, "group_size": 16, "sym": False}),
    ("gptq", "unstructured", "int-quantized", {"bits": 8, "group_size": -1}),
    ("sparsegpt-gptq", "2:4", "pack-quantized", {"bits": 4, "group_size": 32}),
])
def test_round_trip(tiny_dir, tmp_path, method, pattern, fmt, opts):
    run = make_run(tiny_dir, tmp_path, "run", method, pattern, **opts)
    rep = export_compressed(run, tmp_path / "ct", "compressed-tensors" if fmt == "pack-quantized" else fmt)
    assert rep["format"] == fmt
    ours = dense_of(run)
    back = dict(decompress(tmp_path / "ct"))
    from polyprune.stream import Checkpoint
    assert set(back) == set(Checkpoint(tiny_dir("llama")).keys())
    for k, v in back.items():
        assert torch.equal(v.to(ours[k].dtype), ours[k]), k
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    cfg = config.get("quantization_config") or config["polyprune_archive"]
    if "quantized" in fmt:
        assert cfg["quant_method"] == "compressed-tensors"
        assert cfg["format"] == fmt and cfg["ignore"] == ["lm_head"]  # every decoder Linear is quantised
        assert cfg["config_groups"]["group_0"]["weights"]["num_bits"] == opts["bits"]
    else:
        assert cfg["sparsity_config"]["format"] == fmt
    assert rep["compressed_matrix_bytes"] < rep["dense_matrix_bytes"]
    # fp32 dense: int4 ≈ 1/8 + scales, int8 ≈ 1/4, bitmask ≈ 1/2 + 1/32 + row offsets, 2:4 = 1/2 + 1/32
    bound = {"sparse-bitmask": 0.62, "sparse-24-bitmask": 0.54, "pack-quantized": 0.25, "int-quantized": 0.3}[fmt]
    assert rep["matrix_ratio"] < bound


def test_transformers_loads_pack_quantized(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    run = make_run(tiny_dir, tmp_path, "run", "gptq", group_size=16)
    export_compressed(run, tmp_path / "ct")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ct"), quantization_config=CompressedTensorsConfig(
        run_compressed=False))
    ours, theirs = dense_of(run), model.state_dict()
    assert all(torch.equal(theirs[k].float(), ours[k]) for k in ours)


def test_bitmask_keeps_exact_zeros_that_were_kept():
    W = torch.tensor([[0.0, 2.0, 0.0, 3.0], [1.0, 0.0, 5.0, 0.0]])
    kept = torch.tensor([[True, True, False, True], [True, False, True, True]])
    t = bitmask_compress(W, kept)
    assert t["compressed"].tolist() == [0.0, 2.0, 3.0, 1.0, 5.0, 0.0]
    assert t["row_offsets"].tolist() == [0, 3] and t["bitmask"].tolist() == [[0b1011], [0b1101]]
    assert torch.equal(bitmask_decompress(t), W)
    s = sparse24_compress(W, torch.tensor([[False, True, False, True], [True, False, True, False]]))
    assert s["compressed"].tolist() == [[2.0, 3.0], [1.0, 5.0]]


def test_formats_a_run_cannot_be_stored_in(tiny_dir, tmp_path):
    run = make_run(tiny_dir, tmp_path, "run", "wanda")
    for fmt, msg in [("sparse-24-bitmask", "needs 2:4"), ("pack-quantized", "not quantised"), ("zip", "unknown format")]:
        with pytest.raises(UserError, match=msg):
            export_compressed(run, tmp_path / "bad", fmt)
        assert not (tmp_path / "bad").exists()
    q = make_run(tiny_dir, tmp_path, "q", "gptq", bits=4, group_size=16)
    for fmt, msg in [("int-quantized", "8-bit"), ("sparse-bitmask", "quantised")]:
        with pytest.raises(UserError, match=msg):
            export_compressed(q, tmp_path / "bad", fmt)
    ragged = make_run(tiny_dir, tmp_path, "r", "gptq", bits=4, group_size=48)  # 48 does not divide 32 / 64
    with pytest.raises(UserError, match="does not divide"):
        export_compressed(ragged, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]
    with pytest.raises(UserError, match="not a run folder"):
        export_compressed(tmp_path, tmp_path / "bad")


def test_cli_export(tiny_dir, tmp_path):
    from typer.testing import CliRunner
    from polyprune import commands  # noqa: F401
    from polyprune.cli import app
    run = make_run(tiny_dir, tmp_path, "run", "magnitude")
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "ct"), "--dtype", "bfloat16"])
    assert r.exit_code == 0, r.output
    assert ": dense," in r.output and "AutoModelForCausalLM.from_pretrained" in r.output
    rep = json.loads((tmp_path / "ct" / "compression_report.json").read_text())
    assert rep["dense_bytes"] == sum(v.numel() * 2 for k, v in dense_of(run).items())  # llama: lm_head untied


def test_public_names_of_the_package():
    """formats is a package (codecs, export, archive); its names stay importable from polyprune.formats."""
    import polyprune.formats as f
    from polyprune.formats import archive, compress, export
    assert f.export_compressed is export.export_compressed and f.decompress is archive.decompress
    assert f.load_archive is archive.load_archive and f.is_archive is archive.is_archive
    assert f.choose_format is compress.choose_format and f.SPARSE["sparse-bitmask"] is compress.bitmask_compress
    assert f.FORMATS == ("auto", "dense", "pack-quantized", "int-quantized", "sparse-bitmask", "sparse-24-bitmask")
    assert f.choose_format("auto", None, False, True) == "dense"
