"""Tiny random models of every supported family and a small trained tokenizer (tests, examples).

Built from configs with a fixed seed: the same call gives the same weights."""
from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 384

TEXTS = [
    "The quick brown fox jumps over the lazy dog.", "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Der schnelle braune Fuchs springt über den faulen Hund.", "El rápido zorro marrón salta sobre el perro perezoso.",
    "Mbweha mwepesi wa kahawia anaruka juu ya mbwa mvivu.", "敏捷的棕色狐狸跳过了懒狗。",
    "Быстрая коричневая лиса прыгает через ленивую собаку.", "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "def main():\n    return sum(range(10))\n", "import os\nprint(os.getcwd())\n",
]


def _families() -> dict:
    import transformers as t
    common = dict(vocab_size=VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return {
        "llama": lambda: t.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, **common),
        "gemma3": lambda: t.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                             sliding_window=4, layer_types=["sliding_attention", "full_attention",
                                                                            "sliding_attention"], **common),
        "qwen2": lambda: t.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, **common),
        "cohere": lambda: t.CohereConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, **common),
        "xglm": lambda: t.XGLMConfig(d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, **common),
        "bloom": lambda: t.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common),
        "gpt2": lambda: t.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common),
        "opt": lambda: t.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                   word_embed_proj_dim=32, max_position_embeddings=256, **common),
    }


FAMILIES = tuple(_families())


def tiny_model(family: str, seed: int = 0):
    """A tiny random causal LM of ``family`` (see ``FAMILIES``), eval mode, float32."""
    from transformers import AutoModelForCausalLM
    cfg = _families()[family]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


def tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = VOCAB):
    """A byte-level BPE tokenizer trained on a few multilingual lines (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((texts or TEXTS) * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>")


def save_tiny(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny model + tokenizer as a local HF folder (for CLI tests)."""
    folder = Path(folder)
    tiny_model(family, seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
