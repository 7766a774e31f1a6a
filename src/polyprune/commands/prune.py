"""``polyprune prune`` and ``polyprune apply``."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from ..cli import app, examples
from ..config import CalibrationConfig, field_default, field_help
from ..errors import UserError
from .listing import choices

log = logging.getLogger(__name__)


def parse_options(items: list[str]) -> dict:
    """``key=value`` pairs; values parsed as JSON when possible (numbers, true/false)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--option {it!r}: expected key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def split_langs(values: list[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


@app.command(epilog=examples(
    "polyprune prune --method wanda --sparsity 0.5 --calibration-file examples/calibration.txt --out runs/w50",
    "polyprune prune --method sparsegpt --pattern 2:4 --calibration translation --lang fra --target-lang eng "
    "--out runs/sg-fr-en",
    "polyprune prune --method wanda --calibration text --lang swh --nsamples 16 --seqlen 256 --keep-stats "
    "--out runs/w-sw"))
def prune(
    model: str = typer.Option(field_default("model"), "--model", "-m", help=field_help("model")),
    method: str = typer.Option(field_default("method"),
                               help=f"Pruning method: {choices('methods')} (`polyprune list methods`)."),
    sparsity: float = typer.Option(field_default("sparsity"), help=field_help("sparsity")),
    pattern: str = typer.Option(field_default("pattern"), help=field_help("pattern")),
    calibration: Optional[str] = typer.Option(None, "--calibration", help=f"Calibration recipe: {choices('recipes')} "
                                              "(`polyprune list recipes`); or --calibration-file."),
    lang: Optional[list[str]] = typer.Option(None, "--lang", help="Calibration language(s), FLORES or ISO codes "
                                              "(`polyprune list languages`); repeat or comma-separate."),
    target_lang: Optional[str] = typer.Option(None, "--target-lang", help="Target language of translation demonstrations "
                                                  "(default English)."),
    k: Optional[int] = typer.Option(None, "--k", help="Demonstrations per sample (translation/monolingual)."),
    contrast: Optional[str] = typer.Option(None, "--contrast", help="Contrast-set recipe (e.g. code) for wanda-contrastive."),
    contrast_lang: Optional[str] = typer.Option(None, "--contrast-lang", help="Contrast-set language for wanda-contrastive."),
    calibration_file: Optional[Path] = typer.Option(None, "--calibration-file", help="Plain text file: seeded windows "
                                                       "of --seqlen tokens (e.g. examples/calibration.txt)."),
    nsamples: int = typer.Option(field_default("nsamples", CalibrationConfig),
                                 help=field_help("nsamples", CalibrationConfig)),
    seqlen: int = typer.Option(field_default("seqlen", CalibrationConfig), help=field_help("seqlen", CalibrationConfig)),
    seed: int = typer.Option(field_default("seed"), help=field_help("seed")),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local data folder (layout as ../shared/data; 'hub' for the Hugging Face hub). Default: $POLYPRUNE_DATA_DIR, else ./shared/data or ../shared/data when present, else the hub."),
    dtype: Optional[str] = typer.Option(field_default("dtype"), help=field_help("dtype")),
    device: Optional[str] = typer.Option(field_default("device"), help=field_help("device")),
    onload: str = typer.Option(field_default("onload"), "--onload", help=field_help("onload")),
    activation_device: Optional[str] = typer.Option(field_default("activation_device"), "--activation-device",
                                                    help=field_help("activation_device")),
    keep_dense_layers: Optional[str] = typer.Option(None, "--keep-dense-layers", help="Layers left dense, e.g. 0,-1."),
    non_sequential: bool = typer.Option(False, "--non-sequential", help="All statistics from the dense model."),
    count_pads: bool = typer.Option(field_default("count_pads"), "--count-pads", help=field_help("count_pads")),
    allocation: Optional[str] = typer.Option(None, help=f"Layer-wise sparsity allocation: {choices('allocations')} "
                                                        "(`polyprune list allocations`)."),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="Method option key=value "
                                             "(repeatable), e.g. -o scope=row."),
    allocation_option: Optional[list[str]] = typer.Option(None, "--allocation-option", help="Allocation option key=value "
                                                        "(repeatable), e.g. m=5."),
    refine: Optional[str] = typer.Option(None, "--refine", help=f"Mask refinement after the method: "
                                         f"{choices('refinements')} (`polyprune list refinements`)."),
    refine_option: Optional[list[str]] = typer.Option(None, "--refine-option", help="Refinement option key=value (repeatable)."),
    keep_stats: bool = typer.Option(field_default("keep_stats"), "--keep-stats", help=field_help("keep_stats")),
    save_model: bool = typer.Option(field_default("save_model"), "--save-model", help=field_help("save_model")),
    offload: bool = typer.Option(field_default("offload"), "--offload", help=field_help("offload")),
    max_memory: Optional[str] = typer.Option(field_default("max_memory"), "--max-memory", help=field_help("max_memory")),
    activation_dtype: Optional[str] = typer.Option(field_default("activation_dtype"), "--activation-dtype",
                                                   help=field_help("activation_dtype")),
    out: Path = typer.Option(..., "--out", help="Run folder to create."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Prune a model layer by layer and write a run folder."""
    from ..config import validate_config
    cfg = validate_config({
        "model": model, "dtype": dtype, "device": device, "method": method, "sparsity": sparsity,
        "pattern": pattern, "seed": seed, "sequential": not non_sequential, "count_pads": count_pads,
        "keep_dense_layers": [int(x) for x in keep_dense_layers.split(",")] if keep_dense_layers else [],
        "allocation": allocation, "method_options": parse_options(option or []),
        "allocation_options": parse_options(allocation_option or []),
        "refine": refine, "refine_options": parse_options(refine_option or []),
        "keep_stats": keep_stats, "save_model": save_model,
        "offload": offload, "max_memory": max_memory, "activation_dtype": activation_dtype,
        "onload": onload, "activation_device": activation_device,
        "calibration": {"recipe": calibration, "file": str(calibration_file) if calibration_file else None,
                        "langs": split_langs(lang), "target_lang": target_lang, "nsamples": nsamples,
                        "seqlen": seqlen, "k": k, "contrast": contrast, "contrast_lang": contrast_lang,
                        "data_dir": str(data_dir) if data_dir else None},
    }, "prune")
    _validate_early(cfg)
    from ..pipeline import run_prune
    run_prune(cfg, out, force)
    from ..distributed import rank
    if rank() != 0:  # under torchrun only rank 0 writes (and reports) the run
        return
    rec = json.loads((out / "record.json").read_text())
    typer.echo(f"{out}: {cfg.method} {rec['pattern']} achieved sparsity {rec['achieved_sparsity']:.4f} "
               f"in {rec['timings_s']['total']:.1f}s")


def _validate_early(cfg) -> None:
    """Cheap checks before loading a model (the config has validated every setting itself)."""
    _require_data(cfg.calibration)  # before the heavy imports: offline failures in a second or two


def _require_data(cal) -> None:
    """Offline without local data: stop before loading a model (code comes from local packages)."""
    from ..data import resolve_data_dir
    recipes = [r for r in (cal.recipe, cal.contrast) if r and r != "code"]
    if recipes and not cal.file and resolve_data_dir(cal.data_dir) is None:
        from ..data.hub import require_hub
        require_hub(f"calibration data of recipe {recipes[0]!r}", "give --data-dir (or POLYPRUNE_DATA_DIR) with "
                    "the local data folder, e.g. ../shared/data, or --calibration-file")


@app.command(epilog=examples("polyprune apply --masks runs/w50 --out pruned-model",
                             "polyprune apply --masks runs/w50/masks.safetensors --model embedded --out pruned-model"))
def apply(
    masks: Path = typer.Option(..., "--masks", help="Run folder or masks.safetensors."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default: the run's)."),
    out: Path = typer.Option(..., "--out", help="Folder for the pruned model (save_pretrained)."),
    dtype: Optional[str] = typer.Option(None, help="float32 (default), bfloat16, float16."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Re-apply saved masks (and kept weight values) to a base model and save it."""
    from ..masks import load_masks, apply_masks, sparsity_report
    from ..model import load_model
    from ..run import apply_run, is_run, read_config, staged_dir
    if not masks.exists():
        raise UserError(f"--masks {masks} does not exist: give a run folder or a masks.safetensors file")
    run_dir = masks if masks.is_dir() else None
    if model is None:
        if run_dir is None or not is_run(run_dir):
            raise UserError("--model is required when --masks is a bare file")
        model = read_config(run_dir).model
    with staged_dir(out, force) as tmp:
        m, tok = load_model(model, dtype, "cpu")
        if run_dir is not None and is_run(run_dir):
            apply_run(m, run_dir)
            mk = load_masks(run_dir)
        else:
            mk = load_masks(masks)
            apply_masks(m, mk)
        m.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
    typer.echo(f"{out}: saved with sparsity {sparsity_report(mk)['overall']:.4f} over {len(mk)} matrices")
