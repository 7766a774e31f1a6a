"""Gemma's SentencePiece BPE tokenizer rebuilt from the GGUF vocabulary (the GGUF has no merges;
see the package docstring for why transformers' own conversion is not used)."""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# SentencePiece piece types as llama.cpp stores them in `tokenizer.ggml.token_type`.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # ▁


def _build_hf_tokenizer(meta: dict[str, Any]) -> tuple[Any, int]:
    from transformers import PreTrainedTokenizerFast

    backend, merges = _build_backend(meta)
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str, default: str) -> str:
        index = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(index)] if index is not None else default

    kwargs: dict[str, Any] = dict(
        tokenizer_object=backend,
        bos_token=token("bos_token_id", "<bos>"),
        eos_token=token("eos_token_id", "<eos>"),
        unk_token=token("unknown_token_id", "<unk>"),
        pad_token=token("padding_token_id", "<pad>"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        model_max_length=int(meta.get("gemma3.context_length", 32768)),
    )
    if "<mask>" in tokens:
        kwargs["mask_token"] = "<mask>"
    tokenizer = PreTrainedTokenizerFast(**kwargs)
    return tokenizer, merges


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` equivalent to Gemma's SentencePiece BPE model, from GGUF metadata.

    - normaliser: ``" " → "▁"`` only (no prefix space, no Unicode normalisation);
    - control pieces (``<bos>``, ``<end_of_turn>``, ``<unusedN>`` …) are special added tokens,
      user-defined pieces (``\\n`` runs, space runs, ``\\t`` runs, HTML tags …) plain added
      tokens: both matched whole (longest first) before BPE, as SentencePiece's prefix matcher
      does, and never produced by merges;
    - BPE merges: every split of a normal piece into two normal pieces, ranked by the merged
      piece's score (SentencePiece merges the best-scoring adjacent pair first);
    - characters outside the vocabulary fall back to ``<0xNN>`` byte pieces; decoding reverses all.
    """
    return _build_backend(meta)[0]


def _build_backend(meta: dict[str, Any]) -> tuple[Any, int]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    scores = list(meta["tokenizer.ggml.scores"])
    types = list(meta["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.merges" in meta:  # pragma: no cover - this GGUF has none
        logger.warning("embedded model: the GGUF lists merges; ignoring them and deriving merges from scores")
    if len(set(tokens)) != len(tokens):
        raise RuntimeError("embedded model: the GGUF vocabulary has duplicate tokens")

    vocab = {tok: index for index, tok in enumerate(tokens)}
    normal = {tok for tok, kind in zip(tokens, types) if kind == _NORMAL}
    candidates: list[tuple[float, int, int, str, str]] = []
    for index, (piece, kind) in enumerate(zip(tokens, types)):
        if kind != _NORMAL or len(piece) < 2:
            continue
        score = float(scores[index])
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                # best score first; same piece: longer left part first; then vocabulary order
                candidates.append((-score, index, -cut, left, right))
    candidates.sort()
    merges = [(left, right) for _, _, _, left, right in candidates]

    unk = tokens[int(meta.get("tokenizer.ggml.unknown_token_id", vocab.get("<unk>", 3)))]
    model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", _SPACE)
    tokenizer.pre_tokenizer = None
    tokenizer.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])

    # Added tokens in id order; ids already exist in the vocabulary, so none is appended.
    added = [AddedToken(tok, special=(kind == _CONTROL), normalized=False)
             for tok, kind in zip(tokens, types) if kind in (_CONTROL, _USER_DEFINED)]
    tokenizer.add_tokens([t for t in added if not t.special])
    tokenizer.add_special_tokens([t for t in added if t.special])
    if tokenizer.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise RuntimeError("embedded model: adding the GGUF's special tokens changed the vocabulary size")

    bos_id = int(meta.get("tokenizer.ggml.bos_token_id", 2))
    bos = tokens[bos_id]
    if meta.get("tokenizer.ggml.add_bos_token", True):
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    logger.info("embedded model: tokenizer rebuilt (%d pieces, %d merges, %d added tokens)",
                len(tokens), len(merges), len(added))
    return tokenizer, len(merges)
