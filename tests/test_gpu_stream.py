"""Disk streaming onto a compute device (``--offload --device cuda``), tested on the CPU: a streamer
whose compute device is the CPU goes through the same move code as a GPU run and must give the
CPU streamed run's files byte for byte (fake-CUDA placement: tests/test_device.py)."""
import pytest
import torch

import polyprune.onload as onload
from polyprune.model import find_layers
from polyprune.stream import stream_prune


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


@pytest.mark.parametrize("family,method,pattern,options", [("llama", "wanda", "unstructured", {}),
                                                           ("gemma3", "sparsegpt", "2:4", {}),
                                                           ("llama", "gptq", "unstructured", {"method_options": {"group_size": 16}}),
                                                           ("gpt2", "wanda", "unstructured", {"refine": "dsnot"})])
@pytest.mark.parametrize("activation_device", [None, "cpu"])
def test_streaming_through_the_device_path_equals_the_cpu_streamed_run(tiny, tiny_dir, calib_ids, tmp_path, monkeypatch,
                                                                       family, method, pattern, options,
                                                                       activation_device):
    want = stream_prune(tiny_dir(family), calib_ids, tmp_path / "ref", method, 0.5, pattern, **options)
    moves = []
    real = onload.move_module
    monkeypatch.setattr(onload, "move_module", lambda m, d, skip=None: moves.append(torch.device(d)) or real(m, d, skip))
    rec = stream_prune(tiny_dir(family), calib_ids, tmp_path / "dev", method, 0.5, pattern, device="cpu",
                       activation_device=activation_device, **options)
    ref, got = _files(tmp_path / "ref"), _files(tmp_path / "dev")
    assert set(got) == set(ref) and "masks.safetensors" in got
    assert all(got[k] == ref[k] for k in ref)  # masks, kept values, info and every model shard, byte for byte
    n_layers = len(find_layers(tiny(family))[1])
    assert moves == [torch.device("cpu")] * (2 * n_layers)  # each layer onto the compute device, then back
    assert rec["achieved_sparsity"] == want["achieved_sparsity"] == (0.0 if method == "gptq" else 0.5)


def test_offload_on_a_gpu_too_small_for_one_layer_is_one_line(cli, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(onload, "free_bytes", lambda device: 1000)
    (tmp_path / "c.txt").write_text("Le renard brun rapide saute par-dessus le chien paresseux. " * 20)
    r = cli("prune", "--model", tiny_dir("llama"), "--offload", "--device", "cuda", "--calibration-file",
            tmp_path / "c.txt", "--nsamples", "2", "--seqlen", "8", "--out", tmp_path / "r")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "cuda:0 has 0.0 GiB free but pruning needs at least" in r.stderr and "for one decoder layer" in r.stderr
    assert not (tmp_path / "r").exists()


def test_offload_with_cuda_without_a_gpu_is_one_line(cli, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = cli("prune", "--model", tiny_dir("llama"), "--method", "magnitude", "--offload", "--device", "cuda",
            "--out", tmp_path / "r")
    assert r.returncode == 2 and "no CUDA device is visible; use --device cpu" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()
