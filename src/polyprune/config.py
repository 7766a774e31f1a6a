"""Run configuration (pydantic): everything needed to redo a run, validated once.

Field validators check and normalise single settings (names through their registries, languages to
FLORES codes); one model validator holds the rules that need several settings together. The same
rule functions serve the Python API (:func:`check_run`, :func:`check_calibration`), so each rule is
written once. A grid validates its partial entries with ``context={"partial": True}``: fields only."""
from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .errors import UserError
from .options import Bool, Int, Number, Strict



def _value(fn, v):
    """``fn(v)`` with a UserError turned into the ValueError pydantic reports under the field's name."""
    try:
        return fn(v)
    except UserError as e:
        raise ValueError(str(e)) from None


def _language(code: str | None) -> str | None:
    from .languages import get_language
    return None if code is None else _value(lambda c: get_language(c).code, code)


def _partial(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("partial"))


class CalibrationConfig(Strict):
    """Where calibration samples come from: a text file, or a recipe (see ``polyprune.calibration``)."""

    recipe: str | None = None  # None: --calibration-file, or nothing for data-free methods
    file: str | None = None
    langs: list[str] = Field(default_factory=list)
    target_lang: str | None = None
    nsamples: Int = Field(32, description="Calibration samples (windows or demonstration sets).")
    seqlen: Int = Field(512, description="Tokens per calibration window.")
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

    @field_validator("langs")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        return [_language(c) for c in v]

    @field_validator("target_lang", "contrast_lang")
    @classmethod
    def _lang(cls, v: str | None) -> str | None:
        return _language(v)

    @field_validator("recipe", "contrast")
    @classmethod
    def _recipe(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not (info.context and info.context.get("registries") is False):
            from .calibration import RECIPES
            _value(RECIPES.resolve, v)
        return v


class RunConfig(Strict):
    model: str = Field("embedded", description="Hub id, local folder, or 'embedded' (Gemma-3-270M, offline).")
    dtype: str | None = Field(None, description="float32 (CPU default), bfloat16 (GPU default), float16.")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 … (default: auto).")
    method: str = "wanda"
    sparsity: Number = Field(0.5, description="Fraction pruned, in (0, 1) (ignored for N:M).")
    pattern: str = Field("unstructured", description="'unstructured' or N:M such as 2:4.")
    seed: Int = Field(0, description="Seed (calibration sampling, random method).")
    sequential: Bool = True
    count_pads: Bool = Field(False, description="Let pad tokens into statistics (as the references).")
    keep_dense_layers: list[Int] = Field(default_factory=list)
    allocation: str | None = None
    allocation_options: dict[str, Any] = Field(default_factory=dict)
    refine: str | None = None  # mask refinement after the method, e.g. "dsnot"
    refine_options: dict[str, Any] = Field(default_factory=dict)
    method_options: dict[str, Any] = Field(default_factory=dict)  # as given: defaults are filled per call
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    keep_stats: Bool | list[str] = Field(False, description="Keep the input statistics in the run (stats.safetensors); "
                                                        "`analyze --what magnitudes` needs them.")
    save_model: Bool = Field(False, description="Also save the pruned model (save_pretrained).")
    offload: Bool = Field(False, description="Stream layers from disk; the pruned model goes to OUT/model.")
    max_memory: str | None = Field(None, description="Stream when the model exceeds this, e.g. 4GB.")
    activation_dtype: str | None = Field(None, description="Hidden-state buffers: bfloat16, float16 (stats stay fp32).")
    activation_device: str | None = Field(None, description="Where hidden states wait between layers: auto, cpu "
                                                            "(pinned), cuda.")
    onload: str = Field("auto", description="GPU: move one decoder layer at a time to it: auto, always, never.")
    base_hash: str | None = None  # sha256 over the base checkpoint's tensors, recorded at prune time

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from .methods import get_method
        _value(get_method, v)
        return v

    @field_validator("refine")
    @classmethod
    def _refine(cls, v: str | None) -> str | None:
        if v:
            from .methods import get_refiner
            _value(get_refiner, v)
        return v

    @field_validator("allocation")
    @classmethod
    def _allocation(cls, v: str | None) -> str | None:
        from .allocation import get_allocation, is_uniform
        if not is_uniform(v):
            _value(get_allocation, v)
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        from .masks import parse_pattern
        _value(parse_pattern, v)
        return v  # recorded as given (config.yaml and grid cell names read back unchanged)

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> "RunConfig":
        if not _partial(info):
            _value(check_config, self)
        return self

    @property
    def uniform(self) -> bool:
        """Same sparsity in every layer (no layer-wise allocation)."""
        from .allocation import is_uniform
        return is_uniform(self.allocation)


def check_run(method: str, sparsity: float | None, pattern: str, method_options: dict | None = None, *,
              refine: str | None = None, refine_options: dict | None = None, allocation: str | None = None,
              allocation_options: dict | None = None) -> dict[str, Any]:
    """The rules between method, options, sparsity, refinement and allocation (a RunConfig and
    :func:`polyprune.prune` both call this); returns the method options with defaults filled."""
    from .allocation import get_allocation, is_uniform
    from .masks import check_sparsity, parse_pattern
    from .methods import get_method, get_refiner
    meth = get_method(method)
    filled = meth.fill_options(method_options)
    if not parse_pattern(pattern).structured:
        check_sparsity(sparsity)
    if refine:
        get_refiner(refine).fill_options(refine_options)
        if not meth.needs:
            raise UserError(f"refinement {refine!r} needs input statistics but method {method!r} uses none: "
                            f"refine a calibrated method (e.g. --method wanda)")
        if meth.updates_weights:
            raise UserError(f"refinement {refine!r} swaps weights of the original matrix but method {method!r} "
                            f"updates weights: refine a mask-only method (e.g. --method wanda)")
    if not is_uniform(allocation):
        get_allocation(allocation).fill_options(allocation_options)
    return filled


def check_calibration(cc: CalibrationConfig, method: str, needs_data: str | bool | None = None) -> None:
    """The rules between a method and its calibration settings: a file or a recipe (not both), a
    contrast set exactly when the method compares against one, some data when the method (or
    ``needs_data``, what else reads it: kept statistics, a data-driven allocation) uses it."""
    from .methods import get_method
    meth = get_method(method)
    if cc.file and cc.recipe:
        raise UserError("give either --calibration-file or --calibration RECIPE, not both")
    has_contrast = bool(cc.contrast or cc.contrast_lang)
    if has_contrast and "contrast" not in meth.sets:
        raise UserError(f"a contrast set was given but method {method!r} does not use one: "
                        f"use --method wanda-contrastive or drop --contrast")
    if not (meth.needs or needs_data):
        return
    if not (cc.file or cc.recipe):
        who = needs_data if isinstance(needs_data, str) and not meth.needs else f"method {method!r}"
        raise UserError(f"{who} needs calibration data: give --calibration-file FILE or "
                        f"--calibration RECIPE --lang CODE")
    if "contrast" in meth.sets and not has_contrast:
        raise UserError(f"method {method!r} needs a contrast set: give --contrast code or --contrast-lang CODE")


def needs_data(cfg: RunConfig) -> str | None:
    """What makes a run read calibration data although its method may not (``None``: nothing):
    kept statistics, or a data-driven allocation."""
    if cfg.keep_stats:
        return "--keep-stats"
    if cfg.uniform:
        return None
    from .allocation import get_allocation
    return f"allocation {cfg.allocation!r}" if get_allocation(cfg.allocation).needs_calibration else None


def check_config(cfg: RunConfig) -> None:
    """Every cross-field rule of a run config (the model validator's body)."""
    check_run(cfg.method, cfg.sparsity, cfg.pattern, cfg.method_options, refine=cfg.refine,
              refine_options=cfg.refine_options, allocation=cfg.allocation,
              allocation_options=cfg.allocation_options)
    check_calibration(cfg.calibration, cfg.method, needs_data(cfg))
    if cfg.offload:
        check_streaming(cfg.allocation, cfg.keep_stats)


def check_streaming(allocation: str | None, keep_stats: Any) -> None:
    """What a run streamed layer by layer from disk cannot do (a RunConfig with ``offload`` and
    :func:`polyprune.stream.stream_prune` both call this)."""
    from .allocation import is_uniform
    if not is_uniform(allocation):
        raise UserError("layer-wise sparsity allocation needs the whole model in memory: drop --allocation "
                        "or --offload, or give layer_sparsity explicitly")
    if keep_stats:
        raise UserError("--keep-stats needs the whole model in memory (statistics are saved with the masks "
                        "at the end): drop --keep-stats or --offload")


def validate_config(data: dict, what: str = "config", partial: bool = False, registries: bool = True) -> RunConfig:
    """RunConfig from a dict, with pydantic errors turned into one clear line naming the field
    (``partial``: fields only, the cross-field rules wait for the whole config; ``registries=False``:
    calibration recipe names are not looked up)."""
    from pydantic import ValidationError
    context = {"partial": partial, "registries": registries} if partial or not registries else None
    try:
        return RunConfig.model_validate(data, context=context)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            valid = ", ".join(RunConfig.model_fields) if len(err["loc"]) == 1 else ", ".join(
                CalibrationConfig.model_fields)
            raise UserError(f"{what}: unknown key {loc!r}; valid keys: {valid}") from None
        if err["type"] == "value_error":  # a rule's own line, which names its fix
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise UserError(f"{what}: {loc}: {msg}" if loc else f"{what}: {msg}") from None
        raise UserError(f"{what}: {loc}: {err['msg']} (got {err.get('input')!r})") from None


def field_default(name: str, model: type[Strict] = RunConfig) -> Any:
    """A config field's default (the CLI's defaults come from here, never restated)."""
    return model.model_fields[name].get_default(call_default_factory=True)


def field_help(name: str, model: type[Strict] = RunConfig) -> str | None:
    return model.model_fields[name].description


__all__ = ["Bool", "CalibrationConfig", "Int", "Number", "RunConfig", "Strict", "check_calibration",
           "check_config", "check_run", "field_default", "field_help", "needs_data", "validate_config"]
