"""One pruning run from a RunConfig to a run folder (used by the CLI, grids and the demo)."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

from .calibration import Calibration, build_calibration, from_text_file
from .config import CalibrationConfig, RunConfig, check_calibration, needs_data
from .errors import UserError
from .methods import get_method, stat_kinds
from .run import RunWriter, staged_dir

log = logging.getLogger(__name__)


def calibration_from_config(cc: CalibrationConfig, tokenizer, seed: int, method: str,
                            needs_data: str | bool | None = None) -> Calibration | None:
    """Build the calibration a run asks for (``None`` for data-free methods unless ``needs_data``,
    e.g. a data-driven allocation); the rules are :func:`polyprune.config.check_calibration`'s."""
    check_calibration(cc, method, needs_data)
    meth = get_method(method)
    if not meth.needs and not needs_data:
        if cc.file or cc.recipe:
            log.info("method %s uses no calibration data; ignoring the calibration settings", method)
        return None
    if tokenizer is None:
        raise UserError("this model has no tokenizer: calibration text cannot be tokenized")
    common = dict(nsamples=cc.nsamples, seqlen=cc.seqlen, seed=seed, data_dir=cc.data_dir)
    if cc.file:
        cal = from_text_file(cc.file, tokenizer, cc.nsamples, cc.seqlen, seed, tuple(cc.langs))
    else:
        cal = build_calibration(cc.recipe, tokenizer, langs=list(cc.langs), target_lang=cc.target_lang,
                                k=cc.k, **common, **cc.options)
    if "contrast" in meth.sets:
        if cc.contrast_lang:
            contrast = build_calibration(cc.contrast if cc.contrast not in (None, "code") else "monolingual",
                                         tokenizer, langs=[cc.contrast_lang], target_lang=None, k=cc.k, **common)
        else:
            contrast = build_calibration(cc.contrast, tokenizer, langs=[], target_lang=None, k=cc.k, **common)
        cal = cal.with_set("target") + contrast.with_set("contrast")
    return cal


def build_run_calibration(cfg: RunConfig, tokenizer) -> Calibration | None:
    """The calibration of a run config (data also for kept statistics and data-driven allocations such as OWL)."""
    return calibration_from_config(cfg.calibration, tokenizer, cfg.seed, cfg.method, needs_data=needs_data(cfg))


def engine_options(cfg: RunConfig) -> dict:
    """The keyword arguments of :func:`polyprune.prune` that a run config sets (the one place that
    maps a config to the engine: single runs, grid cells, streamed runs)."""
    return dict(seed=cfg.seed, sequential=cfg.sequential, count_pads=cfg.count_pads,
                keep_dense_layers=cfg.keep_dense_layers or None, keep_stats=cfg.keep_stats,
                allocation=cfg.allocation, allocation_options=cfg.allocation_options,
                refine=cfg.refine, refine_options=cfg.refine_options, method_options=dict(cfg.method_options))


def prune_with_config(model, cal: Calibration | None, cfg: RunConfig, layer_io=None, activation_device=None):
    """:func:`polyprune.prune` with every setting of ``cfg`` (``layer_io`` / ``activation_device``: the
    placement chosen by :func:`place_for_config`)."""
    from .engine import prune
    from .model import resolve_dtype
    act = resolve_dtype(cfg.activation_dtype, None) if cfg.activation_dtype else None
    return prune(model, cal, cfg.method, cfg.sparsity, cfg.pattern, activation_dtype=act, layer_io=layer_io,
                 activation_device=activation_device, **engine_options(cfg))


def place_for_config(model, cal: Calibration | None, cfg: RunConfig, device) -> dict:
    """Move a host-loaded model to ``device`` whole, or set up layer-by-layer onloading (see
    :mod:`polyprune.onload`); returns the placement keywords of :func:`prune_with_config`."""
    from . import distributed
    from .model import resolve_dtype
    from .onload import place
    kinds = stat_kinds(cfg.method, cfg.refine)
    tokens = -(-sum(s.n_tokens for s in cal.samples) // distributed.world_size()) if cal is not None else 0
    act = resolve_dtype(cfg.activation_dtype, None) if cfg.activation_dtype else None
    io, act_dev = place(model, device, tokens, kinds, cfg.onload, cfg.activation_device,
                        act.itemsize if act is not None else None)
    return {"layer_io": io, "activation_device": act_dev}


def check_positions(cfg: RunConfig) -> None:
    """Refuse calibration windows longer than the model's positions, from ``config.json`` alone
    (before any weight loads); models without a position limit (or unreadable configs, which the
    loader reports) pass."""
    if not (get_method(cfg.method).needs or not cfg.uniform or cfg.keep_stats):
        return
    try:
        from transformers import AutoConfig
        from .model import resolve_model_path
        conf = AutoConfig.from_pretrained(resolve_model_path(cfg.model))
    except (OSError, ValueError):
        return
    conf = getattr(conf, "text_config", None) or conf
    limit = getattr(conf, "max_position_embeddings", None) or getattr(conf, "n_positions", None)
    if isinstance(limit, int) and cfg.calibration.seqlen > limit:
        raise UserError(f"--seqlen {cfg.calibration.seqlen} exceeds the {limit} positions of {cfg.model}: "
                        f"give --seqlen {limit} or less")


def run_prune(cfg: RunConfig, out: str | Path, force: bool = False) -> Path:
    """Load the model, build the calibration, prune, write the run folder atomically."""
    import torch

    from . import distributed
    from .model import load_model, load_tokenizer
    from .onload import check_device, check_dtype
    out = Path(out)
    get_method(cfg.method)  # fail fast on bad input, before loading anything
    from .stream import should_stream
    if should_stream(cfg.offload, cfg.max_memory, cfg.model, cfg.dtype):
        check_positions(cfg)
        return run_prune_streaming(cfg, out, force)
    device = check_device(cfg.device)
    dtype = check_dtype(cfg.dtype, device)
    if distributed.init_from_env(device) and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (LOCAL_RANK)
    rank0 = distributed.rank() == 0  # every rank calibrates and prunes; rank 0 writes the run
    # under torchrun each phase ends in one agreement (distributed.all_or_none): a failure on any rank
    # stops every rank with its line instead of leaving the others waiting in their next collective
    with distributed.all_or_none():  # the last phase: rank 0's write, so no rank reports a run it lacks
        with staged_dir(out, force) if rank0 else nullcontext() as tmp:
            with distributed.all_or_none():
                # calibration first: its bad input (unknown language, missing file) fails before the weights load
                tok = load_tokenizer(cfg.model)
                cal = build_run_calibration(cfg, tok)
                check_positions(cfg)
            with distributed.all_or_none():
                model, tok = load_model(cfg.model, dtype, "cpu", tokenizer=tok)  # placed on the device below
                placement = place_for_config(model, cal, cfg, device)
            with distributed.all_or_none():  # a failure in the layer walk's last layer meets the others here
                result = prune_with_config(model, cal, cfg, **placement)
            if rank0:
                RunWriter(tmp, cfg).finish(result, cal, tok, model)
    if not rank0:
        return out
    log.info("run written to %s (achieved sparsity %.4f)", out, result.record["achieved_sparsity"])
    return out


def run_prune_streaming(cfg, out: str | Path, force: bool = False) -> Path:
    """:func:`polyprune.pipeline.run_prune` without materialising the model: a run folder with the
    usual files plus the pruned checkpoint in ``model/``."""
    from .model import load_tokenizer
    from .onload import check_device, check_dtype
    from .result import PruneResult
    from .stream import Checkpoint, check_target, local_checkpoint, stream_prune
    out = Path(out)
    from . import distributed
    if distributed.launched():  # every rank would stream and write the same run
        raise UserError("streaming (--offload / --max-memory) runs in one process: drop torchrun, or drop "
                        "--offload and --max-memory")
    device = check_device(cfg.device)  # a GPU: each layer read to the host, then computed there
    gpu = {"device": device, "activation_device": cfg.activation_device} if device.type != "cpu" else {}
    dtype = check_dtype(cfg.dtype, device) if gpu else cfg.dtype
    src = local_checkpoint(cfg.model)
    Checkpoint(src)  # bad input before anything is written
    check_target(out, 0)
    with staged_dir(out, force) as tmp:
        tok = load_tokenizer(str(src))
        cal = calibration_from_config(cfg.calibration, tok, cfg.seed, cfg.method)
        writer = RunWriter(tmp, cfg, stream=True, source=src)
        try:
            rec = stream_prune(src, cal, tmp, cfg.method, cfg.sparsity, cfg.pattern, dtype=dtype, **gpu,
                               tune_allocator=True,  # a polyprune command's own process: see return_freed_memory
                               activation_dtype=cfg.activation_dtype, sink=writer.sink, **engine_options(cfg))
        except BaseException:
            writer.abort()
            raise
        writer.finish(PruneResult(record=rec), cal, tok)
    log.info("streamed run written to %s (achieved sparsity %.4f)", out, rec["achieved_sparsity"])
    return out
