"""Export a run as a checkpoint other tools load, or as a compact archive polyprune reads back.

Formats (``--format``):

- ``dense`` (the default for runs that are not quantised; alias ``hf``): a standard Hugging Face
  checkpoint written by ``save_pretrained`` (sharded safetensors in the chosen dtype, config,
  tokenizer, generation config) with the pruned zeros in place and no ``quantization_config``:
  plain transformers and vLLM load it as it is;
- ``pack-quantized`` (the default for quantised runs) / ``int-quantized``: compressed-tensors
  W4A16 / W8A16 (``quant_method: compressed-tensors``): int2–int8 codes packed into int32 (or int8
  codes in int8) with per-group / per-row scales, written by the library's own compressors; pruned
  + quantised runs carry a ``dense`` ``sparsity_config`` (the zeros are exact codes);
- ``sparse-bitmask`` / ``sparse-24-bitmask`` (only when asked for by name): polyprune archives with
  compressed-tensors' (≤ 0.14) bitmask tensor layouts (kept values + bit-packed mask [+ row offsets]).
  compressed-tensors ≥ 0.15 and vLLM no longer read these, and plain transformers would load such a
  folder with random weights, so an archive is made unloadable by mistake: its ``config.json`` has
  ``model_type: polyprune-archive`` and no ``architectures`` (``AutoConfig`` / ``from_pretrained``
  raise), and its tensors live in ``archive/model.safetensors``, not where loaders look.
  ``pp.load_model(folder)`` and ``polyprune eval folder`` read it back (:func:`load_archive`).

Masks come from the run (never from ``W == 0``), so kept exact zeros survive. Quantised and archive
formats are written tensor by tensor: the model is never materialised.

Layout: :mod:`.compress` (pure per-tensor codecs and the choice of format), :mod:`.export`
(``export_compressed`` and its writers), :mod:`.archive` (reading an export back).
"""
from __future__ import annotations

from ..tensorfile import (INFO_FORMAT, WEIGHT_FILE, Checkpoint, SafetensorsWriter, info_items,  # noqa: F401
                          load_method_info, save_method_info)
from .archive import decompress, is_archive, load_archive
from .compress import (ALIASES, ARCHIVE_DIR, ARCHIVE_MODEL_TYPE, FORMATS, QUANTISED, SPARSE, bitmask_compress,
                       bitmask_decompress, choose_format, compress_quantized, quant_state, sparse24_compress)
from .export import check_masks_fit, compression_config, dense_sizes, export_compressed, linear_modules, load_commands

__all__ = ["FORMATS", "ALIASES", "QUANTISED", "ARCHIVE_MODEL_TYPE", "ARCHIVE_DIR", "SPARSE", "quant_state",
           "compress_quantized", "bitmask_compress", "sparse24_compress", "bitmask_decompress", "choose_format",
           "check_masks_fit", "dense_sizes", "load_commands", "export_compressed", "linear_modules",
           "compression_config", "decompress", "is_archive", "load_archive"]
