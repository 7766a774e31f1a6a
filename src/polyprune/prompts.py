"""Prompt formats shared by calibration demonstrations and the translation evaluation.

Kim et al. (2024, App. A) build demonstrations with Etxaniz et al.'s templates:

* translation ``f_mt``: ``"{Src}: {s}{sep}{Tgt}: {t}{sep}"`` (``TRANSLATION_TEMPLATE``),
* monolingual ``f_lm``: ``"{Lang}: {s}{sep}"`` (``MONOLINGUAL_TEMPLATE``),

k of them concatenated into one sample. ``{Src}`` is the English name of the language
(:attr:`polyprune.languages.Language.name`). The separator ``sep`` is decided by :func:`separator`.

A translation *prompt* is k demonstrations followed by ``"{Src}: {source}{sep}{Tgt}:"``: no space
after the final colon. The demonstrations show ``": "`` before every target, so the model itself
generates the leading space (BPE vocabularies carry it inside the first word's token; a trailing
space in the prompt would force an unnatural token split). Callers strip the generation and cut it
at the first ``sep``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from .languages import Language, get_language

TRANSLATION_TEMPLATE = "{src_name}: {src}{sep}{tgt_name}: {tgt}{sep}"
MONOLINGUAL_TEMPLATE = "{name}: {text}{sep}"
NEWLINE = "\n"
# Model families whose reference setups separate demonstrations with a newline although their
# tokenizer does not add <bos> itself (matched in the tokenizer's name_or_path, lower-cased).
NEWLINE_NAMES = ("bloom",)


def special_prefix(tokenizer) -> list[int]:
    """Token ids that ``tokenizer(text)`` puts before the text (e.g. Gemma's ``[<bos>]``; often ``[]``)."""
    with_special = list(tokenizer("a")["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i:i + len(plain)] == plain:
            return with_special[:i]
    return []


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` puts a token before the text (Llama, Gemma, Mistral …)."""
    return bool(special_prefix(tokenizer))


def separator(tokenizer, sep: str | None = None) -> str:
    """The string between demonstration fields.

    Rule (one place, documented): an explicit ``sep`` wins (escapes such as ``\\n`` are decoded);
    otherwise the tokenizer's eos string (XGLM / mGPT: ``"</s>"``, as in Kim et al.), except a
    newline when (a) the tokenizer adds <bos> itself (Llama/Gemma style: its eos ends a whole
    document, not a line), (b) the tokenizer's name matches ``NEWLINE_NAMES`` (BLOOM), or (c) the eos
    string does not map back to the single eos token (or there is none)."""
    if sep is not None:
        return sep.replace("\\n", "\n").replace("\\t", "\t")
    eos = getattr(tokenizer, "eos_token", None)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    name = str(getattr(tokenizer, "name_or_path", "") or "").lower()
    if not eos or eos_id is None or adds_bos(tokenizer) or any(n in name for n in NEWLINE_NAMES):
        return NEWLINE
    if tokenizer(eos, add_special_tokens=False)["input_ids"] != [eos_id]:
        return NEWLINE
    return eos


def _name(lang: str | Language) -> str:
    return get_language(lang).name


def translation_demos(pairs: Iterable[tuple[str, str]], src: str | Language, tgt: str | Language, sep: str,
                      template: str = TRANSLATION_TEMPLATE) -> str:
    """k translation demonstrations ``f_mt(s, t)`` concatenated."""
    s_name, t_name = _name(src), _name(tgt)
    return "".join(template.format(src_name=s_name, src=s, tgt_name=t_name, tgt=t, sep=sep) for s, t in pairs)


def translation_prompt(demos: Sequence[tuple[str, str]], source: str, src: str | Language, tgt: str | Language,
                       sep: str, template: str = TRANSLATION_TEMPLATE) -> str:
    """Demonstrations then ``"{Src}: {source}{sep}{Tgt}:"`` (no trailing space: see module doc)."""
    head = translation_demos(demos, src, tgt, sep, template)
    # the open query is the template cut just after the target name's colon
    query = template.format(src_name=_name(src), src=source, tgt_name=_name(tgt), tgt="\0", sep=sep)
    query = query[:query.index("\0")].rstrip(" ")
    return head + query


def monolingual_demos(sentences: Iterable[str], lang: str | Language, sep: str,
                      template: str = MONOLINGUAL_TEMPLATE) -> str:
    """k monolingual demonstrations ``f_lm(s)`` concatenated."""
    name = _name(lang)
    return "".join(template.format(name=name, text=s, sep=sep) for s in sentences)


__all__ = ["MONOLINGUAL_TEMPLATE", "NEWLINE", "TRANSLATION_TEMPLATE", "adds_bos", "monolingual_demos",
           "separator", "special_prefix", "translation_demos", "translation_prompt"]
