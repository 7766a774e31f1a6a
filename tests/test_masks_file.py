"""The masks file: one bit per weight, shapes and bit order in the metadata, the older one-byte
layout still read, damaged or foreign masks refused; the base model's hash recorded and checked."""
import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import forked
from polyprune.errors import UserError
from polyprune.masks import load_masks, mask_metadata, pack_bits, save_masks, unpack_bits


def test_pack_bits_hand_computed():
    m = torch.tensor([[True, False, True, True, False, False, False, False, True],
                      [False, False, False, False, False, False, False, False, True]])
    p = pack_bits(m)
    # little bit order: element 8j + i is bit i of byte j; the last byte is zero-padded
    assert p.dtype == torch.uint8 and p.tolist() == [0b00001101, 0b00000001, 0b00000010]  # 18 bits: 3 bytes
    assert torch.equal(unpack_bits(p, [2, 9]), m)


def test_packed_file_round_trip_and_metadata(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"b.weight": torch.rand(7, 13, generator=g) > 0.5, "a.weight": torch.rand(64, 32, generator=g) > 0.3}
    save_masks(masks, tmp_path / "m.safetensors", {"method": "wanda"})
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert {k: f.get_slice(k).get_dtype() for k in f.keys()} == {"a.weight": "U8", "b.weight": "U8"}
        assert f.get_slice("b.weight").get_shape() == [12]  # ceil(91 / 8)
        meta = json.loads(f.metadata()["polyprune"])
    assert meta == {"format": "polyprune-masks", "convention": "True=kept", "packing": "bits", "bit_order": "little",
                    "method": "wanda", "shapes": {"a.weight": [64, 32], "b.weight": [7, 13]}}
    back = load_masks(tmp_path / "m.safetensors")
    assert set(back) == set(masks) and all(back[k].dtype == torch.bool and torch.equal(back[k], masks[k]) for k in masks)


def test_old_one_byte_files_still_read(tmp_path):
    masks = {"x.weight": torch.tensor([[True, False], [False, True]])}
    # as save_masks wrote them before bit-packing: bool tensors, no packing key
    save_file(masks, str(tmp_path / "old.safetensors"),
              metadata={"polyprune": json.dumps({"format": "polyprune-masks", "convention": "True=kept"})})
    assert torch.equal(load_masks(tmp_path / "old.safetensors")["x.weight"], masks["x.weight"])
    save_file({"x.weight": masks["x.weight"].to(torch.uint8)}, str(tmp_path / "u8.safetensors"))
    assert torch.equal(load_masks(tmp_path / "u8.safetensors")["x.weight"], masks["x.weight"])


def test_damaged_and_soft_masks_are_refused(tmp_path):
    save_masks({"x.weight": torch.ones(40, 40, dtype=torch.bool)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-50])
    with pytest.raises(UserError, match="cannot be read .*truncated"):
        load_masks(tmp_path / "cut.safetensors")
    # a soft mask (scores in [0, 1)) would be keep-all after .to(bool): refused instead
    save_file({"x.weight": torch.full((4, 4), 0.3)}, str(tmp_path / "soft.safetensors"))
    with pytest.raises(UserError, match="values other than 0 and 1"):
        load_masks(tmp_path / "soft.safetensors")
    # packed bytes that do not fit the recorded shape
    meta = json.dumps({"packing": "bits", "bit_order": "little", "shapes": {"x.weight": [40, 41]}})
    save_file({"x.weight": torch.zeros(200, dtype=torch.uint8)}, str(tmp_path / "bad.safetensors"),
              metadata={"polyprune": meta})
    with pytest.raises(UserError, match=r"200 torch.uint8 bytes for shape \(40, 41\) \(expected 205"):
        load_masks(tmp_path / "bad.safetensors")


def test_masks_for_another_model_are_refused_on_apply(tiny, tmp_path):
    from polyprune.masks import apply_masks
    model = tiny("llama")
    with pytest.raises(UserError, match="matches no parameter"):
        apply_masks(model, {"model.layers.7.mlp.up_proj.weight": torch.ones(64, 32, dtype=torch.bool)})
    with pytest.raises(UserError, match=r"shape \(64, 16\).*another model"):
        apply_masks(model, {"model.layers.0.mlp.up_proj.weight": torch.ones(64, 16, dtype=torch.bool)})


def make_run(tiny_dir, tmp_path, name="run", method="wanda", **extra):
    from polyprune.config import validate_config
    from polyprune.pipeline import run_prune
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(["Le renard brun rapide saute par-dessus le chien paresseux."] * 40))
    cfg = validate_config({"model": str(tiny_dir("llama")), "method": method, **extra,
                           "calibration": {"file": str(cal), "nsamples": 2, "seqlen": 16}})
    return run_prune(cfg, tmp_path / name)


def test_in_memory_and_streamed_runs_write_the_same_tensor_files(tiny_dir, tmp_path):
    a = make_run(tiny_dir, tmp_path, "mem", "sparsegpt")
    b = make_run(tiny_dir, tmp_path, "str", "sparsegpt", offload=True)
    assert mask_metadata(a / "masks.safetensors") == mask_metadata(b / "masks.safetensors")
    ma, mb = load_masks(a), load_masks(b)
    assert set(ma) == set(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    with safe_open(str(b / "weights.safetensors"), "pt") as f:  # kept values in the model's dtype
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    for name in ("masks.safetensors", "weights.safetensors"):  # one layout, whichever way the run went
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    gptq = {"method_options": {"bits": 4, "group_size": 16}}  # with method info (scales, zero points)
    a = make_run(tiny_dir, tmp_path, "gmem", "gptq", **gptq)
    b = make_run(tiny_dir, tmp_path, "gstr", "gptq", offload=True, **gptq)
    for name in ("masks.safetensors", "weights.safetensors", "info.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_one_dtype_file_is_the_librarys_byte_for_byte(tmp_path):
    from safetensors.torch import save_file
    from polyprune.tensorfile import SafetensorsWriter
    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.{n}": torch.randn(5 + i, 3, generator=g) for i in range(11) for n in ("up", "down")}
    save_file(tensors, str(tmp_path / "lib.safetensors"), metadata={"format": "x"})
    w = SafetensorsWriter(tmp_path / "ours.safetensors", {"format": "x"})
    for k in reversed(list(tensors)):  # any order: close(sort=True) lays them out by name
        w.add(k, tensors[k])
    w.close(sort=True)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_masks_of_a_50_percent_run_are_small(tiny_dir, tmp_path):
    run = make_run(tiny_dir, tmp_path)
    from polyprune.stream import Checkpoint
    ck = Checkpoint(tiny_dir("llama"))
    bf16 = sum(ck.nbytes([n]) // 2 for n in ck.keys())  # the fp32 tiny model in bf16
    ratio = (run / "masks.safetensors").stat().st_size / bf16
    assert ratio <= 0.07, ratio


def test_base_hash_recorded_checked_and_optional(tiny_dir, tmp_path, caplog):
    import shutil
    import yaml
    import polyprune as pp
    from polyprune.run import base_hash
    base = tmp_path / "base"
    shutil.copytree(tiny_dir("llama"), base)
    from polyprune.config import validate_config
    from polyprune.pipeline import run_prune
    run = run_prune(validate_config({"model": str(base), "method": "magnitude"}), tmp_path / "run")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    import hashlib
    from safetensors.torch import load_file
    h = hashlib.sha256()  # by hand: name, dtype, shape and bytes of every tensor, in name order
    for name, t in sorted(load_file(str(base / "model.safetensors")).items()):
        h.update(json.dumps([name, "F32", list(t.shape)]).encode() + t.contiguous().numpy().tobytes())
    want = "sha256:" + h.hexdigest()
    assert cfg["base_hash"] == want == base_hash(base)
    # the same tensors re-saved in another file layout (two shards + index): the same hash
    import shutil as sh
    resharded = tmp_path / "resharded"
    sh.copytree(base, resharded)
    (resharded / "model.safetensors").unlink()
    sd = load_file(str(base / "model.safetensors"))
    names = sorted(sd)
    save_file({k: sd[k] for k in names[:5]}, str(resharded / "a.safetensors"))
    save_file({k: sd[k] for k in names[5:]}, str(resharded / "b.safetensors"), metadata={"format": "pt"})
    (resharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "a.safetensors" if i < 5 else "b.safetensors" for i, k in enumerate(names)}}))
    assert base_hash(resharded) == want
    model, tok = pp.load_model(str(run))  # a run folder by name: base × masks
    name = "model.layers.0.self_attn.q_proj.weight"
    q, m = model.state_dict()[name], load_masks(run)[name]
    assert 0.4 < float(m.float().mean()) < 0.6 and torch.equal(q, load_file(str(base / "model.safetensors"))[name] * m)
    # the base changes: the CLI names both hashes, exit 2, one line
    from safetensors.torch import load_file
    sd = load_file(str(base / "model.safetensors"))
    sd["model.norm.weight"] = sd["model.norm.weight"] * 2
    save_file(sd, str(base / "model.safetensors"), metadata={"format": "pt"})
    r = forked.polyprune("eval", str(run), "--task", "perplexity", "--lang", "fra_Latn")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"has hash {base_hash(base)} but {run} was pruned from {want}" in r.stderr
    with pytest.raises(UserError, match="was pruned from"):
        pp.load_model(str(run))
    # an older run without a hash still loads, with a warning
    del cfg["base_hash"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.WARNING, logger="polyprune"):
        pp.load_model(str(run))
    assert "records no base model hash" in caplog.text
