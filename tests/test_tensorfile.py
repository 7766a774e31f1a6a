"""tensorfile: Checkpoint reads through safe_open (every dtype, unaligned offsets, private changes,
no mapping left behind), row-wise embedding reads, and the tensor-by-tensor writer."""
import hashlib
from pathlib import Path

import pytest
import torch

from polyprune.errors import UserError
from polyprune.tensorfile import Checkpoint, SafetensorsWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"odd": torch.tensor([1, 2, 3], dtype=torch.uint8),  # makes every later offset unaligned
            "bf": torch.randn(5, 7, generator=g).to(torch.bfloat16),
            "half": torch.randn(3, 4, generator=g).to(torch.float16),
            "mask": torch.rand(4, 6, generator=g) > 0.5,
            "full": torch.randn(6, 3, generator=g),
            "empty": torch.empty(0, 4, dtype=torch.bfloat16),
            "ids": torch.arange(5, dtype=torch.int64)}


def _write(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    w = SafetensorsWriter(folder / "model.safetensors", {"format": "pt"})
    for name, t in tensors.items():
        w.add(name, t)
    w.close()
    return folder / "model.safetensors"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_gives_every_tensor_back_bit_for_bit(tmp_path):
    tensors = _tensors()
    _write(tmp_path / "ck", tensors)
    ck = Checkpoint(tmp_path / "ck")
    assert sorted(ck.keys()) == sorted(tensors)
    for name, t in tensors.items():
        got = ck.load(name)
        assert got.dtype == t.dtype and ck.dtype(name) == t.dtype
        assert tuple(got.shape) == tuple(t.shape) == ck.shape(name)
        assert torch.equal(got.view(torch.uint8) if t.numel() else got, t.view(torch.uint8) if t.numel() else t)
    assert ck.nbytes() == sum(t.numel() * t.element_size() for t in tensors.values())


def test_changes_to_a_loaded_tensor_stay_private(tmp_path):
    path = _write(tmp_path / "ck", _tensors())
    before = _sha(path)
    ck = Checkpoint(tmp_path / "ck")
    t = ck.load("bf")
    t.mul_(0).add_(7)
    assert bool((t == 7).all())
    assert _sha(path) == before
    assert torch.equal(ck.load("bf"), _tensors()["bf"])


def test_no_mapping_of_the_file_outlives_its_tensors(tmp_path):
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs /proc/self/maps")
    path = _write(tmp_path / "ck", _tensors())
    ck = Checkpoint(tmp_path / "ck")
    t = ck.load("full")
    assert str(path) in maps.read_text()  # the tensor is a view of the file …
    del t
    assert str(path) not in maps.read_text()  # … and its mapping goes with it, while ck lives on
    assert ck.shape("full") == (6, 3)


def test_a_dtype_streaming_does_not_handle_is_a_user_error(tmp_path):
    from safetensors.torch import save_file
    (tmp_path / "ck").mkdir()
    save_file({"f8": torch.zeros(2, 2).to(torch.float8_e4m3fn)}, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(UserError, match="F8_E4M3"):
        Checkpoint(tmp_path / "ck").load("f8")


def test_lazy_rows_read_only_the_rows_looked_up(tmp_path):
    table = torch.randn(10, 4, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    _write(tmp_path / "ck", {"odd": torch.tensor([9], dtype=torch.uint8), "emb": table})
    ck = Checkpoint(tmp_path / "ck")
    rows, hook = ck.lazy_rows("emb", torch.float32)
    assert rows.dtype == torch.float32 and tuple(rows.shape) == (10, 4)
    assert not bool(rows.any())
    hook(None, (torch.tensor([[3, 7], [3, 0]]),))
    for r in range(10):
        want = table[r].float() if r in (0, 3, 7) else torch.zeros(4)
        assert torch.equal(rows[r], want), r


def test_writer_output_is_what_safetensors_reads(tmp_path):
    from safetensors import safe_open
    tensors = _tensors()
    src = _write(tmp_path / "ck", tensors)
    w = SafetensorsWriter(tmp_path / "copy.safetensors", {"format": "pt", "note": "x"})
    w.add_from("bf", Checkpoint(tmp_path / "ck"))  # raw bytes straight from a checkpoint
    w.add("half", tensors["half"])
    with pytest.raises(ValueError, match="duplicate tensor half"):
        w.add("half", tensors["half"])
    w.close()
    assert w.nbytes == 5 * 7 * 2 + 3 * 4 * 2
    with safe_open(str(tmp_path / "copy.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}
        assert sorted(f.keys()) == ["bf", "half"]
        assert f.get_tensor("bf").dtype == torch.bfloat16 and torch.equal(f.get_tensor("bf"), tensors["bf"])
        assert torch.equal(f.get_tensor("half"), tensors["half"])
    assert not list(tmp_path.glob(".*.data"))
    assert src.is_file()


def test_an_aborted_writer_leaves_nothing(tmp_path):
    w = SafetensorsWriter(tmp_path / "x.safetensors")
    w.add("a", torch.ones(3))
    w.abort()
    assert list(tmp_path.iterdir()) == []
