"""One validated RunConfig: every rule refused with one line (config, Python API, CLI), languages
normalised to FLORES codes, typed method options with their defaults filled, grid cell names kept."""
import inspect
from pathlib import Path

import pytest
import yaml

import polyprune as pp
from polyprune.allocation import is_uniform
from polyprune.config import CalibrationConfig, RunConfig, validate_config
from polyprune.errors import UserError
from polyprune.methods import Spec, get_method, get_refiner

FILE = {"file": "cal.txt"}

RULES = [  # (config, needle): each refused by RunConfig itself
    ({"method": "magnitude", "sparsity": 1.5}, "sparsity 1.5 is outside (0, 1)"),
    ({"method": "magnitude", "sparsity": 0.0}, "outside (0, 1)"),
    ({"method": "magnitude", "pattern": "4:4"}, "pattern: pattern 4:4: need 0 < N < M"),
    ({"method": "magnitude", "pattern": "two of four"}, "pattern: unknown pattern"),
    ({"method": "wandaa", "calibration": FILE}, "method: unknown method 'wandaa': did you mean 'wanda'?"),
    ({"method": "wanda", "refine": "dsnott", "calibration": FILE}, "refine: unknown refinement 'dsnott'"),
    ({"method": "wanda", "allocation": "owll", "calibration": FILE}, "allocation: unknown allocation 'owll'"),
    ({"method": "wanda", "calibration": {"recipe": "nope"}}, "calibration.recipe: unknown calibration recipe 'nope'"),
    ({"method": "wanda", "calibration": {"recipe": "text", "langs": ["klingon"]}},
     "calibration.langs: unknown language 'klingon'"),
    ({"method": "wanda", "calibration": {**FILE, "target_lang": "xx-nope"}}, "calibration.target_lang: unknown language"),
    ({"method": "magnitude", "refine": "dsnot"}, "refinement 'dsnot' needs input statistics but method 'magnitude'"),
    ({"method": "sparsegpt", "refine": "dsnot", "calibration": FILE}, "method 'sparsegpt' updates weights"),
    ({"method": "wanda-contrastive", "calibration": FILE}, "method 'wanda-contrastive' needs a contrast set"),
    ({"method": "wanda", "calibration": {**FILE, "contrast": "code"}}, "method 'wanda' does not use one"),
    ({"method": "magnitude", "calibration": {"contrast_lang": "fra"}}, "method 'magnitude' does not use one"),
    ({"method": "wanda", "calibration": {**FILE, "recipe": "text"}},
     "give either --calibration-file or --calibration RECIPE, not both"),
    ({"method": "wanda"}, "method 'wanda' needs calibration data: give --calibration-file FILE"),
    ({"method": "magnitude", "allocation": "owl"}, "allocation 'owl' needs calibration data"),
    ({"method": "magnitude", "keep_stats": True}, "--keep-stats needs calibration data"),
    ({"method": "wanda", "offload": True, "allocation": "owl", "calibration": FILE},
     "layer-wise sparsity allocation needs the whole model in memory"),
    ({"method": "wanda", "offload": True, "keep_stats": True, "calibration": FILE}, "--keep-stats needs the whole model"),
    ({"method": "wanda", "method_options": {"nonsense": 1}, "calibration": FILE},
     "method 'wanda' has no option 'nonsense': valid options are use_variant"),
    ({"method": "sparsegpt", "method_options": {"blocksize": "big"}, "calibration": FILE},
     "method 'sparsegpt': option 'blocksize'"),
    ({"method": "ria", "method_options": {"a": True}, "calibration": FILE}, "method 'ria': option 'a' must be a number"),
    ({"method": "wanda", "refine": "dsnot", "refine_options": {"cycles": 3}, "calibration": FILE},
     "refinement 'dsnot' has no option 'cycles'"),
    ({"method": "wanda", "allocation": "owl", "allocation_options": {"weighted": "yes"}, "calibration": FILE},
     "allocation 'owl': option 'weighted'"),
]


@pytest.mark.parametrize("data,needle", RULES)
def test_each_rule_is_one_line_from_the_config(data, needle):
    with pytest.raises(UserError) as e:
        validate_config(data, "prune")
    msg = str(e.value)
    assert msg.startswith("prune: ") and needle in msg and "\n" not in msg, msg


def test_the_same_rules_hold_for_a_directly_built_config():
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="needs a contrast set"):
        RunConfig(method="wanda-contrastive", calibration=FILE)


def test_valid_configs_pass_and_keep_what_was_given():
    # data-free methods accept (and ignore) calibration settings, as before
    assert validate_config({"method": "magnitude", "calibration": {"recipe": "text", "langs": ["eng_Latn"]}})
    assert validate_config({"method": "random", "calibration": FILE}).calibration.file == "cal.txt"
    # N:M: the sparsity is ignored and recorded as given (config.yaml of existing runs reads back)
    cfg = validate_config({"method": "magnitude", "pattern": "2:4", "sparsity": 1.5})
    assert cfg.sparsity == 1.5 and cfg.pattern == "2:4"
    # method options stay as given: defaults are filled per call, not stored (grid cell names)
    cfg = validate_config({"method": "sparsegpt", "method_options": {"percdamp": 0.1}, "calibration": FILE})
    assert cfg.method_options == {"percdamp": 0.1}
    assert cfg.model_dump(exclude_defaults=True) == {"method": "sparsegpt", "method_options": {"percdamp": 0.1},
                                                     "calibration": FILE}
    # streaming onto a GPU: each layer read to the host, computed on the device
    assert validate_config({"method": "wanda", "offload": True, "device": "cuda", "calibration": FILE}).offload


def test_partial_configs_check_fields_but_not_cross_field_rules():
    assert validate_config({"method": "wanda"}, partial=True).method == "wanda"  # no calibration yet: fine
    with pytest.raises(UserError, match="unknown method"):
        validate_config({"method": "nope"}, partial=True)


def test_languages_are_normalised_to_flores_codes():
    cc = validate_config({"method": "wanda-contrastive", "calibration": {
        "recipe": "translation", "langs": ["fra", "de"], "target_lang": "en", "contrast_lang": "Swahili"}}).calibration
    assert (cc.langs, cc.target_lang, cc.contrast_lang) == (["fra_Latn", "deu_Latn"], "eng_Latn", "swh_Latn")
    assert CalibrationConfig(langs=["eng_Latn"]).langs == ["eng_Latn"]


def test_is_uniform_and_the_config_property():
    assert [is_uniform(x) for x in (None, "", "uniform", "owl")] == [True, True, True, False]
    assert validate_config({"method": "magnitude"}).uniform
    assert not validate_config({"method": "wanda", "allocation": "owl", "calibration": FILE}).uniform


# ---------------------------------------------------------------------------------- typed options
def test_options_models_hold_the_documented_defaults():
    assert get_method("sparsegpt").options == {"blocksize": 128, "percdamp": 0.01, "reference_threshold": True}
    assert get_method("gptq").fill_options({"bits": 8}) == {"bits": 8, "group_size": 128, "sym": True,
                                                            "blocksize": 128, "percdamp": 0.01, "act_order": False}
    assert get_method("ria").fill_options({"a": 1})["a"] == 1.0  # an int is a number
    assert get_refiner("dsnot").options["max_cycles"] == 50
    from polyprune.allocation import get_allocation
    assert get_allocation("owl").options == {"lam": 0.08, "lam_nm": 2.0, "weighted": True, "m": 5.0}


def test_a_method_sees_its_defaults_without_the_user_giving_them(monkeypatch, tiny, calib_ids):
    import polyprune.methods.sparsegpt as sg
    seen = []
    real = sg.sparsegpt_prune

    def spy(W, H, sparsity, n, m, blocksize, percdamp, reference_threshold, name=""):
        seen.append((blocksize, percdamp, reference_threshold))
        return real(W, H, sparsity, n, m, blocksize, percdamp, reference_threshold, name)

    monkeypatch.setattr(sg, "sparsegpt_prune", spy)
    pp.prune(tiny("llama"), calib_ids, "sparsegpt", 0.5)
    assert seen and set(seen) == {(128, 0.01, True)}
    seen.clear()
    pp.prune(tiny("llama"), calib_ids, "sparsegpt", 0.5, method_options={"blocksize": 16})
    assert set(seen) == {(16, 0.01, True)}


def test_a_directly_called_method_gets_its_defaults_filled():
    seen = {}
    from polyprune.methods import _with_options
    from polyprune.methods.sparsegpt import SparseGPTOptions
    fn = _with_options(lambda W, stats, spec: seen.update(spec.options), "method", "probe", SparseGPTOptions)
    fn(None, None, Spec(0.5, options={"percdamp": 1}))
    assert seen == {"blocksize": 128, "percdamp": 1.0, "reference_threshold": True}


@pytest.mark.parametrize("kwargs,needle", [
    ({"blocksize": 12.5}, "method 'sparsegpt': option 'blocksize'"),
    ({"blocksize": "8"}, "option 'blocksize'"),
    ({"nonsense": 1}, "method 'sparsegpt' has no option 'nonsense': valid options are blocksize, percdamp"),
])
def test_the_python_api_refuses_bad_options_with_the_same_lines(tiny, calib_ids, kwargs, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        pp.prune(tiny("llama"), calib_ids, "sparsegpt", 0.5, method_options=kwargs)


def test_the_python_api_applies_the_config_rules(tiny, calib_ids):
    with pytest.raises(UserError, match=r"sparsity 1.5 is outside \(0, 1\)"):
        pp.prune(tiny("llama"), calib_ids, "wanda", 1.5)
    with pytest.raises(UserError, match="unknown allocation"):
        pp.prune(tiny("llama"), calib_ids, "wanda", 0.5, allocation="owll")
    with pytest.raises(UserError, match="allocation 'owl': option 'lam'"):
        pp.prune(tiny("llama"), calib_ids, "wanda", 0.5, allocation="owl", allocation_options={"lam": "x"})


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def calfile(tmp_path_factory):
    p = tmp_path_factory.mktemp("cal") / "cal.txt"
    p.write_text("The committee met on Tuesday to discuss the budget. " * 80, encoding="utf-8")
    return p


@pytest.mark.parametrize("extra,needle", [
    (["--lang", "klingon"], "unknown language 'klingon'"),
    (["--method", "sparsegpt", "--refine", "dsnot"], "updates weights"),
    (["--contrast", "code"], "does not use one"),
    (["--calibration", "text"], "not both"),
    (["--offload", "--allocation", "owl"], "needs the whole model in memory"),
    (["--method", "sparsegpt", "-o", "blocksize=abc"], "option 'blocksize'"),
    (["--method", "wanda-contrastive"], "needs a contrast set"),
])
def test_cli_refuses_each_rule_with_one_line_and_writes_nothing(extra, needle, tiny_dir, calfile, tmp_path, cli):
    out = tmp_path / "run"
    r = cli("prune", "--model", tiny_dir("llama"), "--calibration-file", calfile, "--nsamples", "2",
            "--seqlen", "16", "--out", out, *extra)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_records_an_iso_language_as_its_flores_code(tiny_dir, calfile, tmp_path, cli):
    out = tmp_path / "run"
    r = cli("prune", "--model", tiny_dir("llama"), "--calibration-file", calfile, "--lang", "fra",
            "--nsamples", "2", "--seqlen", "16", "--out", out)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["calibration"]["langs"] == ["fra_Latn"]


def test_cli_defaults_come_from_the_config_fields():
    from polyprune.commands.prune import prune
    params = inspect.signature(prune).parameters
    for name in ("model", "method", "sparsity", "pattern", "seed", "count_pads", "save_model", "onload"):
        assert params[name].default.default == RunConfig.model_fields[name].default, name
        assert params[name].default.default is not None
    for name in ("nsamples", "seqlen"):
        assert params[name].default.default == CalibrationConfig.model_fields[name].default
    assert params["sparsity"].default.help == RunConfig.model_fields["sparsity"].description


# ----------------------------------------------------------------------------------------- grid
KURZ_SMALL_CELLS = [  # read from `polyprune run recipes/kurz2025-small.yaml --dry-run` before the config moved
    "embedded-dense-29c021149f",
    "embedded-wanda-0.5-ar-s0-5139f92906", "embedded-wanda-0.5-de-s0-af999604ae",
    "embedded-wanda-0.5-en-s0-f07a44a6d2", "embedded-wanda-0.5-es-s0-61ab55bf53",
    "embedded-wanda-0.5-ru-s0-0618443bb5", "embedded-wanda-0.5-sw-s0-ff2ef73402",
    "embedded-wanda-0.5-zh-s0-7c09b324e9", "embedded-wanda-0.5-all7-s0-5bc4cc8957",
    "embedded-sparsegpt-0.5-ar-s0-da7655585c", "embedded-sparsegpt-0.5-de-s0-1e8951cd3d",
    "embedded-sparsegpt-0.5-en-s0-29707923fc", "embedded-sparsegpt-0.5-es-s0-f506326746",
    "embedded-sparsegpt-0.5-ru-s0-2bf5496e97", "embedded-sparsegpt-0.5-sw-s0-a50d704264",
    "embedded-sparsegpt-0.5-zh-s0-896914ed20", "embedded-sparsegpt-0.5-all7-s0-17213e143a",
]


def test_grid_cell_names_of_a_shipped_recipe_are_unchanged():
    from polyprune.grid import load_grid
    g = load_grid(Path(__file__).resolve().parents[1] / "recipes" / "kurz2025-small.yaml")
    assert [c.dirname for c in g.cells] == KURZ_SMALL_CELLS


@pytest.mark.parametrize("axes,needle", [
    ("{methods: [wanda-contrastive], calibrations: [{recipe: text, langs: [eng_Latn]}]}", "needs a contrast set"),
    ("{methods: [wanda], calibrations: [{recipe: text, langs: [eng_Latn], contrast: code}]}", "does not use one"),
    ("{methods: [sparsegpt], calibrations: [{recipe: text, langs: [eng_Latn]}]}\ndefaults: {refine: dsnot}",
     "updates weights"),
    ("{methods: [{method: wanda, method_options: {eps: 1}}], calibrations: [{recipe: text, langs: [eng_Latn]}]}",
     "method 'wanda' has no option 'eps'"),
])
def test_grid_cells_apply_the_config_rules_with_the_cell_prefix(tmp_path, axes, needle):
    from polyprune.grid import load_grid
    p = tmp_path / "g.yaml"
    p.write_text(f"axes: {axes}\n")
    with pytest.raises(UserError) as e:
        load_grid(p)
    assert needle in str(e.value) and ": cell " in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_grid_data_free_cells_ignore_a_contrast_calibration(tmp_path):
    from polyprune.grid import load_grid
    p = tmp_path / "g.yaml"
    p.write_text("axes: {methods: [magnitude, wanda-contrastive], "
                 "calibrations: [{recipe: text, langs: [eng], contrast: code}]}\n")
    cells = [c for c in load_grid(p).cells if c.kind == "prune"]
    assert [c.config["method"] for c in cells] == ["magnitude", "wanda-contrastive"]
    assert cells[0].config["calibration"]["contrast"] is None
    assert cells[1].config["calibration"]["langs"] == ["eng_Latn"]


def test_a_run_folder_written_before_a_rule_existed_still_reads(tmp_path):
    """Reading a run checks its fields, not the cross-field rules of today's prune: a run that was
    valid when written (here: file and recipe given to a data-free method) still loads."""
    import yaml

    from polyprune.run import read_config
    data = {"method": "magnitude", "calibration": {"file": "a.txt", "recipe": "text", "langs": ["fra"]}}
    with pytest.raises(UserError, match="not both"):
        validate_config(data)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    cfg = read_config(tmp_path)
    assert cfg.method == "magnitude" and cfg.calibration.langs == ["fra_Latn"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**data, "metod": "wanda"}))
    with pytest.raises(UserError, match="unknown key 'metod'"):
        read_config(tmp_path)
