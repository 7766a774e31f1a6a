"""Data-parallel calibration with torch.distributed (``torchrun --nproc-per-node N -m polyprune prune …``).

Every rank runs the whole layer walk on its share of the calibration samples (sample i goes to rank
i mod N, so every calibration set reaches every rank); before a layer is pruned its statistics are
combined over the ranks, so every rank prunes with the statistics of all samples and ends with the
same masks. Running means become sums × counts, are summed, and become means again (Wanda's
feature norms, the Hessians); the moments are merged with Chan's parallel formula; per-language
sums are summed. Only the summation order differs from one process, so masks equal the
single-process ones up to float rounding at ties (measured in tests/test_gpu_engine.py).
NCCL on GPUs, gloo on the CPU; only rank 0 writes the run folder.

A failure on one rank must not leave the others waiting in their next collective: the phases of a
run (calibration, model loading, pruning, rank 0's write) end in :func:`all_or_none`, one exchange
in which every rank learns whether any rank failed, and on a failure every rank stops with the first
failing rank's line (exit 2). Inside the layer walk, each layer's first exchange (the statistics'
counts, :func:`gather`) is such an agreement point too: a rank that fails in a layer (e.g. out of
GPU memory) sends its line where the others send their counts, so they stop at once instead of at
the process group's timeout (``POLYPRUNE_DIST_TIMEOUT_S`` seconds, default 600, which remains for a
rank that dies without a word).
"""
from __future__ import annotations

import atexit
import logging
import os
from contextlib import contextmanager
from datetime import timedelta

import torch

from .errors import UserError

log = logging.getLogger(__name__)


def active() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if active() else 1


def launched() -> bool:
    """Started as one of several processes (``torchrun`` sets WORLD_SIZE), joined or not yet."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


TIMEOUT_ENV = "POLYPRUNE_DIST_TIMEOUT_S"
TIMEOUT_S = 600.0


def timeout_s() -> float:
    """Seconds a rank waits in a collective for the others (``POLYPRUNE_DIST_TIMEOUT_S``, default 600):
    finite, so a rank that died outside an agreement point does not leave the others waiting for ever."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UserError(f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds: e.g. {TIMEOUT_ENV}=600")
    return value


def init_from_env(device: torch.device, timeout: float | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1);
    returns whether this is a multi-process run. Failures are one clear line. ``timeout``: seconds
    (default :func:`timeout_s`)."""
    import torch.distributed as dist
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return active()
    timeout = timeout_s() if timeout is None else timeout
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed: run one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"torch.distributed ({backend}) initialisation failed: {first}: start every rank with "
                        f"torchrun and check MASTER_ADDR / MASTER_PORT") from None
    log.debug("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    atexit.register(_leave)
    return active()


def _leave() -> None:
    """Leave the process group before the interpreter exits: a process that exits inside it
    (e.g. after its one-line error) can otherwise abort in the backend's threads
    ("terminate called without an active exception", exit -6) instead of exiting with its code."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):  # already torn down: nothing left to leave
            pass


class AgreedError(UserError):
    """A failure every rank has learned of (raised on every rank by :func:`agree`)."""


def _line(e: BaseException) -> str:
    """What the other ranks print for this rank's failure: bad input as it is, anything else with its rank."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.errno is not None:
        from .io import os_error_line
        what = os_error_line(e)
    else:
        first = (str(e).strip().splitlines() or [""])[0]
        what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return f"rank {rank()} failed: {what}"


# every exchange of a multi-process run is one all_gather_object of (tag, value): a rank that failed
# sends its line wherever the others are, and each of them reads it as a failure
_OK, _FAILED = "ok", "failed"


def _exchange(tag: str, value) -> list[tuple[str, object]]:
    import torch.distributed as dist
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (tag, value))
    return everyone


def _failures(everyone) -> list[tuple[int, str]]:
    return [(r, value) for r, (tag, value) in enumerate(everyone) if tag == _FAILED]


def gather(value) -> list:
    """``value`` of every rank, in rank order (one exchange), or :class:`AgreedError` when a rank
    sent its failure line instead (:func:`agree`): an agreement point inside the layer walk."""
    everyone = _exchange(_OK, value)
    failed = _failures(everyone)
    if failed:
        log.debug("rank %d stops: rank %d failed", rank(), failed[0][0])
        raise AgreedError(failed[0][1])
    return [v for _, v in everyone]


def agree(error: BaseException | None) -> None:
    """One exchange between all ranks: returns when no rank failed; otherwise every rank raises
    :class:`AgreedError` with the first failing rank's line, except that a rank whose own failure is
    not bad input re-raises it (its traceback or OS-error line kept). It meets the others at their
    next exchange, an agreement or a :func:`gather`. In a single process it only re-raises ``error``."""
    if not active():
        if error is not None:
            raise error
        return
    failed = _failures(_exchange(_OK, None) if error is None else _exchange(_FAILED, _line(error)))
    if not failed:
        return
    if error is not None and not isinstance(error, UserError):
        try:
            error.agreed = True  # type: ignore[attr-defined]  (an enclosing phase lets it pass)
        except AttributeError:
            pass
        raise error
    log.debug("rank %d stops: rank %d failed", rank(), failed[0][0])
    raise AgreedError(failed[0][1]) from None


@contextmanager
def all_or_none():
    """One phase of a multi-process run: at its end the ranks :func:`agree` on its outcome (one
    collective), so all go on or all stop with the same line. Nested phases: a failure already
    agreed on passes through without another exchange (every rank skips it alike)."""
    try:
        yield
    except Exception as e:
        if getattr(e, "agreed", False) or isinstance(e, AgreedError) or not active():
            raise
        agree(e)
        raise
    agree(None)


def shard(calibration):
    """This rank's samples (i mod N == rank). Fewer samples than ranks in a set is an error."""
    from .calibration import Calibration
    n, r = world_size(), rank()
    if n == 1:
        return calibration
    counts = {s: sum(1 for x in calibration.samples if x.set == s) for s in calibration.sets}
    small = {s: c for s, c in counts.items() if c < n}
    if small:
        s, c = next(iter(small.items()))
        raise UserError(f"{n} ranks but calibration set {s!r} has only {c} sample(s): use at most {c} ranks "
                        f"(--nproc-per-node) or more calibration samples")
    return Calibration(calibration.samples[r::n], calibration.recipe, dict(calibration.meta))


def reduce_stats(stats: dict) -> None:
    """Combine the statistics of one layer (``module name -> SetStats``) over all ranks, in place."""
    import torch.distributed as dist
    if not active():
        return
    items = [(m, s, ms) for m, sets in stats.items() for s, ms in sets.items()]
    meta = [(ms.nsamples, ms.ntokens, dict(ms.lang_tokens)) for _, _, ms in items]
    everyone = gather(meta)  # counts and language tags of every rank: one exchange per layer, an agreement point
    for k, (_, _, ms) in enumerate(items):
        per_rank = [m[k] for m in everyone]
        n_all = sum(p[0] for p in per_rank)
        for name in ("scaler_row", "H"):
            t = getattr(ms, name)
            if t is not None:
                t.mul_(ms.nsamples)  # running mean -> sum
                dist.all_reduce(t)
                t.div_(max(n_all, 1))
        if ms.mean is not None:
            _merge_moments(ms, [p[1] for p in per_rank])
        langs = sorted(set().union(*(p[2] for p in per_rank)))
        if langs:
            ref = ms.scaler_row if ms.scaler_row is not None else ms.mean
            device = ref.device if ref is not None else ms.device
            sq = torch.stack([ms.lang_sqsum.get(k, torch.zeros(ms.columns, device=device)) for k in langs])
            pos = torch.stack([ms.lang_positive.get(k, torch.zeros(ms.columns, device=device)) for k in langs])
            dist.all_reduce(sq)
            dist.all_reduce(pos)
            ms.lang_sqsum = {k: sq[j].clone() for j, k in enumerate(langs)}
            ms.lang_positive = {k: pos[j].clone() for j, k in enumerate(langs)}
            ms.lang_tokens = {k: sum(p[2].get(k, 0) for p in per_rank) for k in langs}
        ms.nsamples = n_all
        ms.ntokens = sum(p[1] for p in per_rank)


def _merge_moments(ms, tokens: list[int]) -> None:
    """The ranks' (count, mean, M2) merged in rank order (:func:`polyprune.stats.merge_moments_`)."""
    import torch.distributed as dist

    from .stats import merge_moments_
    n = len(tokens)
    means = [torch.empty_like(ms.mean) for _ in range(n)]
    m2s = [torch.empty_like(ms.m2) for _ in range(n)]
    dist.all_gather(means, ms.mean)
    dist.all_gather(m2s, ms.m2)
    count, mean, m2 = 0, torch.zeros_like(ms.mean), torch.zeros_like(ms.m2)
    for n_b, mean_b, m2_b in zip(tokens, means, m2s):
        if n_b:
            merge_moments_(mean, m2, count, mean_b, m2_b, n_b)
            count += n_b
    ms.mean.copy_(mean)
    ms.m2.copy_(m2)
