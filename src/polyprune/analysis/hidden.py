"""Forward passes over evaluation text per language, for the dense model and each pruned run.

One pass per (model, language) collects what the hidden-state analyses need: every decoder
layer's output for the real tokens (pads and the start token excluded), the per-sentence mean of
those outputs, and how often each FFN neuron is active. The base model is loaded once; a run's
masks are applied to it and the dense weights restored afterwards.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..masks import is_conv1d
from ..model import find_layers, prunable_modules
from ..progress import track
from .fidelity import FidelityAccumulator

log = logging.getLogger(__name__)

MAX_TOKENS = 256  # per sentence; FLORES sentences are far shorter


def ffn_output_module(layer: nn.Module) -> tuple[str, nn.Module]:
    """The FFN output projection of a decoder layer: the Linear/Conv1D with the widest input (the
    FFN's intermediate size); on a tie, the later one in module order."""
    best = None
    for name, mod in prunable_modules(layer).items():
        width = mod.weight.shape[0] if is_conv1d(mod) else mod.in_features
        if best is None or width >= best[2]:
            best = (name, mod, width)
    if best is None:
        raise UserError(f"{type(layer).__name__} has no Linear layers: cannot find its FFN")
    return best[0], best[1]


def _parent(layer: nn.Module, name: str) -> nn.Module:
    return layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer


@dataclass
class Collected:
    """What one forward pass over one language gives, per decoder layer."""

    states: list[torch.Tensor] | None  # per layer [N, d] real-token outputs (None when not kept)
    sent_means: torch.Tensor  # [n_sentences, layers, d]
    active: torch.Tensor  # [layers, n_ffn] count of tokens with the neuron active
    tokens: int


@dataclass
class Hidden:
    """Results over runs × languages; ``dense`` results under the key ``None``."""

    langs: list[str]
    fidelity: dict = field(default_factory=dict)  # (run index, lang) -> [FidelityAccumulator per layer]
    sent_means: dict = field(default_factory=dict)  # (run index | None, lang) -> [n, layers, d]
    active: dict = field(default_factory=dict)  # (run index | None, lang) -> [layers, n_ffn]
    tokens: dict = field(default_factory=dict)  # (run index | None, lang) -> int


class Forwarder:
    """Runs a model over texts with hooks on every decoder layer (and its FFN)."""

    def __init__(self, model: nn.Module, tokenizer, activation: str = "act", batch_size: int = 8):
        from ..evaluate.scoring import start_token_id
        if activation not in ("act", "product"):
            raise UserError(f"unknown --activation {activation!r}: use 'act' (the FFN activation function's "
                            f"output) or 'product' (the input of the FFN output projection)")
        self.model, self.tok, self.activation, self.batch_size = model, tokenizer, activation, batch_size
        self.path, self.layers = find_layers(model)
        self.start = start_token_id(tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.start
        self.ffn = [ffn_output_module(layer) for layer in self.layers]
        self.n_ffn = [(m.weight.shape[0] if is_conv1d(m) else m.in_features) for _, m in self.ffn]

    def encode(self, texts: list[str]) -> list[list[int]]:
        from ..evaluate.scoring import encode
        return [encode(self.tok, t)[:MAX_TOKENS] for t in texts]

    @contextmanager
    def _hooks(self, cur: dict, outs: list, counts: list):
        handles = []

        def layer_hook(i):
            def fn(mod, inp, out):
                h = out[0] if isinstance(out, (tuple, list)) else out
                outs[i] = h.detach()
            return fn

        def count(i, x):
            x = x.detach()
            if x.shape[-1] != self.n_ffn[i] or x.shape[:2] != cur["sel"].shape:
                return
            counts[i] += (x[cur["sel"]] > 0).sum(0).to(torch.float64).cpu()

        try:
            for i, layer in enumerate(self.layers):
                handles.append(layer.register_forward_hook(layer_hook(i)))
                name, mod = self.ffn[i]
                if self.activation == "product":
                    handles.append(mod.register_forward_pre_hook(lambda m, inp, _i=i: count(_i, inp[0])))
                else:
                    acts = [c for c in _parent(layer, name).children()
                            if not any(True for _ in c.parameters()) and not isinstance(c, nn.Dropout)]
                    if not acts:
                        raise UserError(f"cannot find the FFN activation module of {type(layer).__name__}: "
                                        f"use --activation product")
                    for a in acts:
                        handles.append(a.register_forward_hook(lambda m, inp, out, _i=i: count(_i, out)))
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def run(self, rows: list[list[int]], keep_states: bool = True, description: str = "forward") -> Collected:
        from ..evaluate.scoring import model_device
        device = model_device(self.model)
        n_layers = len(self.layers)
        states: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
        means = [None] * len(rows)
        counts = [torch.zeros(n, dtype=torch.float64) for n in self.n_ffn]
        cur: dict = {}
        outs: list = [None] * n_layers
        tokens = 0
        order = list(range(len(rows)))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        base = getattr(self.model, "base_model", None) or self.model
        with self._hooks(cur, outs, counts):
            for batch in track(batches, description, total=len(batches)):
                width = max(len(rows[i]) for i in batch)
                ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
                am = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    ids[r, :len(rows[i])] = torch.tensor(rows[i])
                    am[r, :len(rows[i])] = 1
                sel = am.bool().clone()
                sel[:, 0] = False  # the start token is not text
                cur["sel"] = sel.to(device)
                base(input_ids=ids.to(device), attention_mask=am.to(device), use_cache=False)
                tokens += int(sel.sum())
                per_layer_means = []
                for li in range(n_layers):
                    h = outs[li].float()
                    if keep_states:
                        states[li].append(h[cur["sel"]].cpu())
                    s = cur["sel"].unsqueeze(-1).float()
                    per_layer_means.append(((h * s).sum(1) / s.sum(1).clamp_min(1)).cpu())
                pm = torch.stack(per_layer_means, 1)  # [B, layers, d]
                for r, i in enumerate(batch):
                    means[i] = pm[r]
        return Collected([torch.cat(s) for s in states] if keep_states else None, torch.stack(means),
                         torch.stack(counts), tokens)


class WeightSwitch:
    """Apply runs to one loaded base model and go back to the dense weights."""

    def __init__(self, model: nn.Module):
        from ..model import prunable_weights
        self.model = model
        self.params = {n: m.weight for n, m in prunable_weights(model).items()}
        self.dense = {n: p.data.detach().clone() for n, p in self.params.items()}

    def restore(self, names=None) -> None:
        with torch.no_grad():
            for n in names if names is not None else self.params:
                self.params[n].data.copy_(self.dense[n])

    def apply(self, run_path) -> None:
        from ..run import apply_run
        self.restore()
        apply_run(self.model, run_path)


def load_base(runs, opts):
    """The runs' base model (float32 by default) and tokenizer."""
    from ..model import load_model
    from .common import same_base
    same_base(runs)
    model, tok = load_model(runs[0].cfg.model, opts.dtype, opts.device)
    if tok is None:
        raise UserError(f"{runs[0].cfg.model} has no tokenizer: the hidden-state analyses need one")
    return model, tok


_CACHE: dict = {}


def collect(runs, langs: list[str], opts, keep_states: bool = True) -> Hidden:
    """Dense and pruned forward passes over ``opts.nsentences`` FLORES evaluation sentences of each
    language (cached for the other analyses of the same invocation)."""
    from .common import eval_texts
    key = (tuple(str(r.path) for r in runs), tuple(langs), opts.nsentences, opts.activation, opts.data_dir,
           opts.batch_size)
    if key in _CACHE and (_CACHE[key].fidelity or not keep_states):
        return _CACHE[key]
    keep_states = True  # cheap at these sizes, and one pass then serves every hidden-state analysis
    texts = {lang: eval_texts(lang, opts.nsentences, opts.data_dir) for lang in langs}  # fail fast on data
    model, tok = load_base(runs, opts)
    fw = Forwarder(model, tok, opts.activation, opts.batch_size)
    sw = WeightSwitch(model)
    res = Hidden(langs)
    for lang in langs:
        rows = fw.encode(texts[lang])
        sw.restore()
        dense = fw.run(rows, keep_states, f"dense {lang}")
        res.sent_means[(None, lang)], res.active[(None, lang)], res.tokens[(None, lang)] = \
            dense.sent_means, dense.active, dense.tokens
        for ri, r in enumerate(runs):
            sw.apply(r.path)
            pr = fw.run(rows, keep_states, f"{r.group} {lang}")
            res.sent_means[(ri, lang)], res.active[(ri, lang)], res.tokens[(ri, lang)] = \
                pr.sent_means, pr.active, pr.tokens
            if keep_states:
                accs = []
                for hd, hp in zip(dense.states, pr.states):
                    a = FidelityAccumulator()
                    a.add(hd, hp)
                    accs.append(a)
                res.fidelity[(ri, lang)] = accs
        del dense
    sw.restore()
    _CACHE.clear()
    _CACHE[key] = res
    return res
