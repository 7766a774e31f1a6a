"""Device placement on CUDA without a GPU: torch's FakeTensorMode makes CUDA tensors (shapes, dtypes
and devices, no data) and raises on any operation that mixes devices.

What fake tensors cannot cover, and how this file deals with it:
- host syncs (``.item()``, ``bool(t)``: data the fake tensors do not have) are answered by
  :class:`HostSyncs` with fixed values (True / 0) and counted; data-dependent branches therefore take
  one fixed path (e.g. the lowest-k tie fix-up runs, the Cholesky succeeds at the first damping);
- Python-level calls that open a CUDA device guard first (indexing, ``.to``, ``.contiguous()``,
  ``int(t)``, ``torch.nonzero`` …) fail on a CPU-only torch before reaching the fake tensors:
  :class:`NoCudaGuard` reruns such a call on CPU stand-ins of the same shape (after checking that its
  tensors are on one device; CUDA tensors may take CPU index tensors, as in torch) and puts the
  result back on CUDA; data-dependent shapes (boolean-mask indexing, ``nonzero``) remain uncovered,
  so the engine avoids them in its hot paths (masked fills instead);
- anything that leaves torch: RIA's linear assignment (scipy on ``.numpy()``), hence RIA N:M with
  channel permutation is covered only up to the zig-zag order (``lsa=False``);
- ops without a fake kernel for data they lack: ``torch.corrcoef`` (lang-corr allocation's divergence);
- numerics: values are not computed, so CPU-equality lives in the other test files.
"""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

import polyprune as pp
from polyprune.masks import Pattern
from polyprune.model import find_layers
from polyprune.methods import Spec, get_method, get_refiner
from polyprune.stats import KINDS, ModuleStats, SetStats, column_norms

CUDA = torch.device("cuda", 0)


class HostSyncs(TorchDispatchMode):
    """Answers scalar reads of fake tensors (True for bools, 0 for numbers) and counts them."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
            t = args[0]
            return True if t.dtype == torch.bool else (0.0 if t.dtype.is_floating_point else 0)
        return func(*args, **(kwargs or {}))


def _like(t: torch.Tensor, device) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


class NoCudaGuard(TorchFunctionMode):
    """Reruns calls that a CPU-only torch refuses for CUDA tensors (device guard) on CPU stand-ins."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self._to(func, args, kwargs)
        try:
            return func(*args, **kwargs)
        except RuntimeError as e:
            if "not linked with support for cuda" not in str(e):
                raise
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device for t in tensors if t.device.type != "cpu"}
        if len(devices) > 1 or (func is not torch.Tensor.__getitem__ and
                                any(t.device.type == "cpu" and t.dim() for t in tensors)):
            raise RuntimeError(f"{getattr(func, '__name__', func)}: tensors on more than one device: "
                               f"{sorted({str(t.device) for t in tensors})}")
        dev = devices.pop()
        out = func(*tree_map(lambda t: _like(t, "cpu") if isinstance(t, torch.Tensor) and t.device == dev else t,
                             args), **kwargs)
        name = getattr(func, "__name__", "")
        if (name.endswith("_") and not name.startswith("__")) or func is torch.Tensor.__setitem__:
            return args[0] if out is not None else None  # in place: no data to carry over
        return tree_map(lambda t: _like(t, dev) if isinstance(t, torch.Tensor) else t, out)

    @staticmethod
    def _to(func, args, kwargs):
        t = args[0]
        kwargs = dict(kwargs)
        copy = kwargs.pop("copy", False)
        if func is torch.Tensor.to:
            device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
        else:
            device, dtype = (CUDA if func is torch.Tensor.cuda else torch.device("cpu")), None
        device = torch.device(device or t.device)
        device = CUDA if device.type == "cuda" and device.index is None else device
        dtype = dtype or t.dtype
        if device == t.device and dtype == t.dtype:
            return t.clone() if copy else t
        if "cuda" in (device.type, t.device.type):
            return torch.empty(t.shape, dtype=dtype, device=device)
        return func(*args, **kwargs)


@pytest.fixture
def fake_cuda():
    import logging
    quiet = logging.getLogger("torch._subclasses.fake_tensor")
    level, quiet.level = quiet.level, logging.CRITICAL  # it logs each refused call NoCudaGuard reruns
    try:
        with FakeTensorMode(), HostSyncs() as syncs, NoCudaGuard():
            yield syncs
    finally:
        quiet.setLevel(level)


def to_fake_cuda(module: torch.nn.Module) -> torch.nn.Module:
    """``module.to("cuda")`` for fake tensors (Module.to cannot swap fake parameters)."""
    from polyprune.onload import move_module
    return move_module(module, CUDA)


def _stats(kinds, cols=32, rows_per_call=(7, 5, 9), langs=("fra", "deu", "fra"), dtype=torch.float32):
    ms = ModuleStats(cols, frozenset(kinds))
    for t, lang in zip(rows_per_call, langs):
        ms.add(torch.randn(t, cols, device=CUDA).to(dtype), (lang,), batch=1)
    return ms


@pytest.mark.parametrize("act_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_statistics_kind_lives_on_the_inputs_device_in_fp32(fake_cuda, act_dtype):
    before = fake_cuda.count
    ms = _stats(KINDS, dtype=act_dtype)
    assert fake_cuda.count == before  # accumulation never reads a value back to the host
    assert ms.scaler_row.device == CUDA and ms.scaler_row.dtype == torch.float32
    assert ms.H.device == CUDA and ms.H.dtype == torch.float32
    assert ms.mean.device == CUDA and ms.mean.dtype == torch.float64 and ms.m2.dtype == torch.float64
    assert set(ms.lang_sqsum) == {"fra", "deu"}
    assert all(v.device == CUDA and v.dtype == torch.float32 for v in ms.lang_sqsum.values())
    assert all(v.device == CUDA and v.dtype == torch.float32 for v in ms.lang_positive.values())
    assert ms.nsamples == 3 and ms.ntokens == 21
    assert all(t.device == CUDA and t.dtype == torch.float32 for t in ms.tensors().values())
    assert ms.feature_norm().device == CUDA and ms.variance.dtype == torch.float32


@pytest.mark.parametrize("cols", [64, 512])  # 512 features: the width whose CPU path takes a padded copy
def test_column_norms_stay_on_the_device(fake_cuda, cols):
    x = torch.randn(6, cols, device=CUDA, dtype=torch.bfloat16)
    out = column_norms(x)
    assert out.device == CUDA and out.dtype == torch.float32 and out.shape == (cols,)


def _method_case(name, pattern, options=None, rows=16, cols=32):
    meth = get_method(name)
    kinds = set(meth.needs)
    sets = meth.sets or ("target",)
    stats = SetStats({s: _stats(kinds or {"sqnorm"}, cols) for s in sets})
    W = torch.randn(rows, cols, device=CUDA)
    return meth.fn(W, stats, Spec(0.5, pattern, dict(options or {}), "model.layers.0.mlp.down_proj.weight", 0))


METHOD_CASES = [("magnitude", {}), ("magnitude", {"scope": "row"}), ("random", {}), ("wanda", {}),
                ("wanda", {"use_variant": True}), ("wanda-contrastive", {}), ("sparsegpt", {}),
                ("sparsegpt", {"reference_threshold": False}), ("gptq", {"group_size": 8}),
                ("gptq", {"group_size": 8, "act_order": True}), ("sparsegpt-gptq", {"group_size": 8}),
                ("ria", {}), ("ria", {"lsa": False}), ("lang-wanda", {})]


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
@pytest.mark.parametrize("name,options", METHOD_CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}"
                                                             for n, o in METHOD_CASES])
def test_every_method_computes_on_the_weights_device(fake_cuda, name, options, pattern):
    if name == "ria" and pattern.structured and options.get("lsa", True):
        pytest.skip("RIA's linear assignment runs in scipy on host data, which fake tensors do not have")
    res = _method_case(name, pattern, options)
    assert res.kept.device == CUDA and res.kept.dtype == torch.bool and res.kept.shape == (16, 32)
    if res.weight is not None:
        assert res.weight.device == CUDA and res.weight.dtype == torch.float32
    for k, v in res.info.items():
        if isinstance(v, torch.Tensor):
            assert v.device == CUDA, k


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)], ids=str)
def test_dsnot_refines_on_the_device(fake_cuda, pattern):
    stats = SetStats({"target": _stats({"moments", "sqnorm"})})
    W = torch.randn(16, 32, device=CUDA)
    kept = get_method("wanda").fn(W, stats, Spec(0.5, pattern)).kept
    res = get_refiner("dsnot").fn(W, stats, Spec(0.5, pattern, {"max_cycles": 3}), kept)
    assert res.kept.device == CUDA and res.kept.dtype == torch.bool
    assert isinstance(res.info["dsnot_swaps"], int)


def test_allocations_math_on_the_device(fake_cuda):
    """OWL's outlier ratio; lang-corr's ``torch.corrcoef`` has no fake-tensor kernel (data-dependent)."""
    from polyprune.allocation import outlier_ratio
    from polyprune.methods.wanda import wanda_scores
    ms = _stats({"sqnorm", "per_lang"})
    a = wanda_scores(torch.randn(16, 32, device=CUDA), ms.feature_norm())
    assert isinstance(outlier_ratio(a, 5.0), float)


def _fake_model_and_calibration(family="llama"):
    from polyprune.testing import tiny_model
    model = to_fake_cuda(tiny_model(family))
    ids = torch.randint(5, 384, (4, 12), device="cpu")
    return model, ids


@pytest.mark.parametrize("method,pattern,extra", [("wanda", "unstructured", {}), ("sparsegpt", "2:4", {}),
                                                  ("wanda", "unstructured", {"refine": "dsnot"}),
                                                  ("gptq", "unstructured", {"group_size": 16}),
                                                  ("lang-wanda", "unstructured", {})])
def test_layer_walk_and_prune_on_fake_cuda(fake_cuda, method, pattern, extra):
    model, ids = _fake_model_and_calibration()
    engine = {k: v for k, v in extra.items() if k == "refine"}
    options = {k: v for k, v in extra.items() if k != "refine"}
    masks = pp.prune(model, ids, method, 0.5, pattern, keep_stats=method == "wanda", method_options=options, **engine)
    assert len(masks.masks) == 14  # 2 layers × 7 Linears
    assert all(m.device.type == "cpu" and m.dtype == torch.bool for m in masks.masks.values())  # stored on the host
    assert all(p.device == CUDA for p in model.parameters())  # the model stays where it was
    assert all(w.device.type == "cpu" for w in masks.weights.values())
    for per_set in masks.stats.values():
        assert all(t.device.type == "cpu" for d in per_set.values() for t in d.values())


def test_owl_dense_pass_on_fake_cuda(fake_cuda):
    """OWL's statistics pass and outlier ratios on the device (its band arithmetic is host math on
    a few floats per layer, which fake tensors cannot evaluate: boolean indexing of the targets)."""
    from polyprune.allocation import owl_outlier_ratios
    model, ids = _fake_model_and_calibration()
    ratios, params = owl_outlier_ratios(model, ids)
    assert len(ratios) == 2 and all(isinstance(r, float) for r in ratios) and params == [params[0]] * 2


def test_onloading_walk_on_fake_cuda(fake_cuda, monkeypatch):
    """Weights on the CPU, each layer moved to the GPU for its turn; hidden states on the (pinned) CPU;
    layers come back into their pinned host buffers (fake tensors cannot pin: a copy stands in)."""
    from polyprune.testing import tiny_model
    from polyprune.onload import Onloader
    pins = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pins.append(self.shape) or self.clone())
    model = tiny_model("llama")
    ids = torch.randint(5, 384, (4, 12))
    io = Onloader(model, CUDA, activation_device="cpu")
    layers = find_layers(model)[1]
    n_tensors = len(list(layers.parameters())) + len(list(layers.buffers()))
    assert len(pins) == n_tensors  # every layer tensor pinned once, up front
    masks = pp.prune(model, ids, "sparsegpt", 0.5, layer_io=io, activation_device=io.activation_device)
    assert len(masks.masks) == 14 and all(m.device.type == "cpu" for m in masks.masks.values())
    assert all(p.device.type == "cpu" for p in layers.parameters())  # every layer went back …
    assert all(p is io.pinned[i][n] for i, layer in enumerate(layers) for n, p in layer.named_parameters())
    assert len(pins) == n_tensors  # … into the same pinned buffers, none pinned again


@pytest.fixture
def llama_dir(tiny_dir):
    return tiny_dir("llama")  # saved before fake_cuda starts (a fake model cannot be saved)


@pytest.mark.parametrize("activation_device,where", [("cpu", "cpu"), (None, "cuda")])
def test_streaming_from_disk_onto_fake_cuda(llama_dir, tmp_path, monkeypatch, activation_device, where):
    """``--offload --device cuda``: the skeleton on meta, each layer read to the host, computed on the GPU
    and back on the host when released. Fake tensors have no bytes, so the release records what it is
    given instead of writing it. Tensors read from disk are real CPU tensors, hence
    ``allow_non_fake_inputs`` (they become fake CPU tensors: a cross-device op still raises)."""
    import importlib
    import logging

    import polyprune.onload as onload
    from polyprune.stream import LayerStreamer, stream_prune
    monkeypatch.setattr(onload, "free_bytes", lambda device: 80 << 30)
    seen, masks_seen, walked = [], {}, []
    prune_mod = importlib.import_module("polyprune.engine")
    real_walk = prune_mod.walk

    def walk(*a, **k):  # where the engine keeps the hidden states
        walked.append(torch.device(k["activation_device"]).type)
        return real_walk(*a, **k)

    class Sink:  # what the run writer's streaming sink is handed
        def add(self, name, mask, weight=None, info=None):
            masks_seen[name] = mask

        def report(self):
            return {"overall": 0.5, "pruned": 0, "total": 0, "per_matrix": {}}

        def close(self):
            pass

        def abort(self):
            pass

    def release(self, i, layer):
        seen.append({p.device for p in layer.parameters()})
        self._to_host(layer)
        seen.append({p.device for p in layer.parameters()})
        for mod in layer.modules():  # freed as the real release does
            for k, p in mod._parameters.items():
                if p is not None:
                    mod._parameters[k] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"),
                                                            requires_grad=False)

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from polyprune.tensorfile import Checkpoint
    real_load = Checkpoint.load

    def load(self, name):  # safetensors builds tensors from file storage: read for real, outside fake mode
        with unset_fake_temporarily():
            return real_load(self, name)

    monkeypatch.setattr(Checkpoint, "load", load)
    monkeypatch.setattr(LayerStreamer, "release", release)
    monkeypatch.setattr(prune_mod, "walk", walk)
    ids = torch.randint(5, 384, (4, 12))
    monkeypatch.setattr(logging.getLogger("torch._subclasses.fake_tensor"), "level", logging.CRITICAL)
    with FakeTensorMode(allow_non_fake_inputs=True), HostSyncs(), NoCudaGuard():
        stream_prune(llama_dir, ids, tmp_path / "s", "sparsegpt", 0.5, "2:4", device=CUDA,
                     activation_device=activation_device, check_space=False, sink=Sink())
    assert seen == [{CUDA}, {torch.device("cpu")}] * 2  # 2 layers: computed on the GPU, written from the host
    assert len(masks_seen) == 14 and all(m.device.type == "cpu" and m.dtype == torch.bool for m in masks_seen.values())
    assert walked == [where]
