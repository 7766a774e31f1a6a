"""Run configuration (pydantic): everything needed to redo a run."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, field_validator

from .errors import UserError


class Strict(BaseModel):
    """Unknown keys refused; scalars not coerced (``seeds: [true]`` is not seed 1, ``"8"`` not 8)."""
    model_config = ConfigDict(extra="forbid")


Int = StrictInt
Bool = StrictBool


def _number(v: Any) -> Any:
    """A float field accepts ints (YAML ``1``) but never a bool or a string."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be a number, got {v!r}")
    return float(v)


Number = Annotated[float, BeforeValidator(_number)]


class CalibrationConfig(Strict):
    """Where calibration samples come from: a text file, or a recipe (see ``polyprune.calibration``)."""

    recipe: str | None = None  # None: --calibration-file, or nothing for data-free methods
    file: str | None = None
    langs: list[str] = Field(default_factory=list)
    target_lang: str | None = None
    nsamples: Int = 32
    seqlen: Int = 512
    k: Int | None = None
    contrast: str | None = None  # contrast set recipe, e.g. "code"
    contrast_lang: str | None = None
    data_dir: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("nsamples", "seqlen")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v


class RunConfig(Strict):
    model: str = "embedded"
    dtype: str | None = None
    device: str | None = None
    method: str = "wanda"
    sparsity: Number = 0.5
    pattern: str = "unstructured"
    seed: Int = 0
    sequential: Bool = True
    count_pads: Bool = False
    keep_dense_layers: list[Int] = Field(default_factory=list)
    allocation: str | None = None
    allocation_options: dict[str, Any] = Field(default_factory=dict)
    refine: str | None = None  # mask refinement after the method, e.g. "dsnot"
    refine_options: dict[str, Any] = Field(default_factory=dict)
    method_options: dict[str, Any] = Field(default_factory=dict)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    keep_stats: Bool | list[str] = False
    save_model: Bool = False
    offload: Bool = False  # stream decoder layers from the safetensors checkpoint (polyprune.stream)
    max_memory: str | None = None  # stream when the model would not fit, e.g. "4GB"
    activation_dtype: str | None = None  # storage dtype of hidden states between layers, e.g. bfloat16
    activation_device: str | None = None  # where hidden states wait between layers: auto (None), cpu, cuda
    onload: str = "auto"  # GPU runs: move one decoder layer at a time to the device (auto, always, never)
    base_hash: str | None = None  # sha256 over the base checkpoint's tensors, recorded at prune time


def validate_config(data: dict, what: str = "config") -> RunConfig:
    """RunConfig from a dict, with pydantic errors turned into one clear line."""
    from pydantic import ValidationError
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = ", ".join(RunConfig.model_fields) if len(err["loc"]) == 1 else ", ".join(
                CalibrationConfig.model_fields)
            raise UserError(f"{what}: unknown key {loc!r}; valid keys: {valid}") from None
        raise UserError(f"{what}: {loc}: {err['msg']}") from None
