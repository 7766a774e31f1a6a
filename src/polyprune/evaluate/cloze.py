"""Zero-shot cloze classification with English templates (Lin et al. 2022, as used by Kim et al.).

Each candidate label fills the template; the *whole* filled sequence is scored given only the
start token (``log p(sequence | <bos>)``, see :mod:`.scoring`), and the label with the highest
score wins. Two normalisations are computed for every candidate: ``sum`` (total log-likelihood,
XGLM's reference) and ``mean`` (per predicted token, Kim et al.'s code); ``norm`` picks the one
that decides the prediction. Candidates sharing the text before the label (the premise, the
review) share one forward pass of their common token prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .scoring import encode, grouped_logprobs

NORMS = ("sum", "mean")


@dataclass(frozen=True)
class ClozeTemplate:
    """``prefix(item)`` is the text before the label; ``fill(item, verbal)`` the whole candidate."""

    name: str
    pattern: str
    verbalizers: tuple[str, ...]  # indexed by label id
    prefix: Callable[[dict], str]
    fill: Callable[[dict, str], str]


XNLI_TEMPLATE = ClozeTemplate(
    name="xnli-en", pattern="{premise}, right? {Yes|Also|No}, {hypothesis}",
    verbalizers=("Yes", "Also", "No"),  # entailment, neutral, contradiction
    prefix=lambda it: f"{it['premise']}, right?",
    fill=lambda it, v: f"{it['premise']}, right? {v}, {it['hypothesis']}",
)

MARC_TEMPLATE = ClozeTemplate(
    name="marc-en", pattern="{review} It is {negative|positive}",
    verbalizers=("negative", "positive"),  # label 0, 1
    prefix=lambda it: f"{it['text']} It is",
    fill=lambda it, v: f"{it['text']} It is {v}",
)


def classify(model, tokenizer, items: Sequence[dict], template: ClozeTemplate, norm: str = "sum",
             batch_size: int = 16, progress: str | None = None) -> list[dict]:
    """Per item: ``{sum: [...], mean: [...], tokens: [...], pred}`` over the template's labels."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}")
    seqs, owner, groups_by_prefix = [], [], {}
    for i, it in enumerate(items):
        key = template.prefix(it)
        group = groups_by_prefix.setdefault(key, [])
        for v in template.verbalizers:
            group.append(len(seqs))
            seqs.append(encode(tokenizer, template.fill(it, v)))
            owner.append(i)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else seqs[0][0]
    lps = grouped_logprobs(model, seqs, list(groups_by_prefix.values()), batch_size=batch_size, pad_id=pad,
                           progress=progress)
    k = len(template.verbalizers)
    out = []
    for i in range(len(items)):
        lp = lps[i * k:(i + 1) * k]
        sums = [float(x.double().sum()) for x in lp]
        toks = [int(x.numel()) for x in lp]
        means = [s / n for s, n in zip(sums, toks)]
        scores = sums if norm == "sum" else means
        out.append({"sum": sums, "mean": means, "tokens": toks,
                    "pred": max(range(k), key=lambda j: (scores[j], -j))})
    return out
