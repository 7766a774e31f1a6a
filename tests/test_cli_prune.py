"""`polyprune prune` / `apply` end to end on a saved tiny model; bad input → one line, exit 2, nothing written."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import polyprune as pp

TEXT = ("The committee met on Tuesday to discuss the budget. " * 40
        + "Le comité s'est réuni mardi pour discuter du budget. " * 40)


def cli_subprocess(*args):
    """The installed entry point, in a fresh process."""
    env = {**os.environ, "POLYPRUNE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "polyprune", *map(str, args)], capture_output=True, text=True,
                          env=env)




@pytest.fixture(scope="module")
def calfile(tmp_path_factory):
    p = tmp_path_factory.mktemp("cal") / "cal.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_prune_writes_a_complete_run_folder(tiny_dir, calfile, tmp_path, cli):
    model = tiny_dir("gpt2")
    out = tmp_path / "run"
    r = cli_subprocess("prune", "--model", model, "--method", "sparsegpt", "--sparsity", "0.5", "--calibration-file", calfile,
            "--nsamples", "4", "--seqlen", "32", "--out", out)
    assert r.returncode == 0, r.stderr
    assert {"config.yaml", "masks.safetensors", "weights.safetensors", "record.json",
            "calibration.jsonl"} <= {p.name for p in out.iterdir()}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "sparsegpt" and cfg["calibration"]["nsamples"] == 4 and "torch" in cfg["versions"]
    rec = json.loads((out / "record.json").read_text())
    assert 0.49 < rec["achieved_sparsity"] < 0.52 and rec["calibration"]["tokens"] == 4 * 32
    assert {"capture", "statistics", "prune", "total"} <= set(rec["timings_s"]) and rec["memory"]["peak_rss_bytes"] > 0
    lines = (out / "calibration.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["n_tokens"] == 32
    masks = pp.load_masks(out)
    assert masks["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: stored [in, out]
    # apply: base model + masks + kept values == the pruned model
    r = cli("apply", "--masks", out, "--out", tmp_path / "applied")
    assert r.returncode == 0, r.stderr
    m1, _ = pp.load_model(str(tmp_path / "applied"))
    from polyprune.run import load_run_or_model
    m2, _, _ = load_run_or_model(str(out))
    for (n, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(a, b), n
    w = dict(m1.named_parameters())["transformer.h.1.mlp.c_fc.weight"]
    assert (w[~masks["transformer.h.1.mlp.c_fc.weight"]] == 0).all()


def test_same_config_same_bytes(tiny_dir, calfile, tmp_path, cli):
    model = tiny_dir("llama")
    for run in ("a", "b"):
        r = cli("prune", "--model", model, "--method", "wanda", "--calibration-file", calfile, "--nsamples", "3",
                "--seqlen", "16", "--seed", "7", "--out", tmp_path / run)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "a/masks.safetensors").read_bytes() == (tmp_path / "b/masks.safetensors").read_bytes()


BAD = [
    (["--method", "nope"], "unknown method"),
    (["--pattern", "4:4"], "0 < N < M"),
    (["--pattern", "3:7"], "not divisible by M=7"),
    (["--sparsity", "1.0"], "outside (0, 1)"),
    (["--sparsity", "0"], "outside (0, 1)"),
    (["--seqlen", "100000"], "a window needs"),
    (["--option", "nonsense=1"], "has no option 'nonsense'"),
    (["--keep-dense-layers", "9"], "out of range"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_one_line_exit_2_nothing_written(extra, message, tiny_dir, calfile, tmp_path, cli):
    out = tmp_path / "run"
    args = ["prune", "--model", tiny_dir("llama"), "--calibration-file", calfile, "--nsamples", "2",
            "--seqlen", "16", "--out", out]
    r = cli(*args, *extra)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists() and not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_bad_model_and_data_inputs(tiny_dir, calfile, tmp_path, cli):
    out = tmp_path / "run"
    base = ["prune", "--nsamples", "2", "--seqlen", "16", "--out", out]
    r = cli(*base, "--model", tmp_path / "missing", "--calibration-file", calfile)
    assert r.returncode == 2 and "does not exist" in r.stderr
    notlm = tmp_path / "notlm"
    notlm.mkdir()
    (notlm / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 10, "d_model": 8,
                                                   "num_layers": 1, "num_heads": 2, "d_ff": 8}))
    r = cli(*base, "--model", notlm, "--calibration-file", calfile)
    assert r.returncode == 2 and "not a causal LM" in r.stderr, r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = cli(*base, "--model", tiny_dir("llama"), "--calibration-file", empty)
    assert r.returncode == 2 and "is empty" in r.stderr
    r = cli(*base, "--model", tiny_dir("llama"))
    assert r.returncode == 2 and "needs calibration data" in r.stderr
    assert not out.exists()
    out.mkdir()
    r = cli(*base, "--model", tiny_dir("llama"), "--calibration-file", calfile)
    assert r.returncode == 2 and "--force" in r.stderr


def test_no_decoder_layers_and_non_finite_activations(tiny):
    with pytest.raises(pp.UserError, match="no decoder layers"):
        pp.prune(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.ones(1, 4, dtype=torch.long), method="magnitude")
    model = tiny("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("inf"))
    # a non-finite weight is named itself, before the activations it poisons are looked at
    with pytest.raises(pp.UserError, match=r"non-finite weights .* model\.layers\.0\.mlp\.down_proj\.weight"):
        pp.prune(model, torch.randint(5, 300, (2, 8)), method="wanda")


def test_magnitude_needs_no_calibration(tiny_dir, tmp_path, cli):
    r = cli("prune", "--model", tiny_dir("opt"), "--method", "magnitude", "--pattern", "2:4", "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "m/record.json").read_text())
    assert rec["achieved_sparsity"] == 0.5 and rec["calibration"] is None


def test_keep_stats_with_a_data_free_method(tiny_dir, calfile, tmp_path, cli):
    """--keep-stats reads the calibration even for magnitude (the statistics come from it): the masks
    are magnitude's, stats.safetensors is there; without calibration data one line names --keep-stats."""
    base = ["prune", "--model", tiny_dir("llama"), "--method", "magnitude"]
    r = cli(*base, "--keep-stats", "--out", tmp_path / "none")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: prune: --keep-stats needs calibration data: give --calibration-file FILE or --calibration RECIPE "
        "--lang CODE"], r.stderr
    assert not (tmp_path / "none").exists()
    cal = ["--calibration-file", calfile, "--nsamples", "2", "--seqlen", "16"]
    assert cli(*base, *cal, "--keep-stats", "--out", tmp_path / "ks").returncode == 0
    assert cli(*base, "--out", tmp_path / "plain").returncode == 0
    a, b = pp.load_masks(tmp_path / "ks"), pp.load_masks(tmp_path / "plain")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ks" / "stats.safetensors"), "pt") as f:
        assert any(k.endswith("scaler_row") or "sqnorm" in k for k in f.keys()), list(f.keys())[:5]
    assert json.loads((tmp_path / "ks" / "record.json").read_text())["calibration"]["samples"] == 2


def test_calibration_errors_come_before_the_weights_load(tiny_dir, tmp_path, cli, monkeypatch):
    """A bad calibration (unknown language / no local data) fails before any weight is read."""
    import transformers
    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    out = tmp_path / "run"
    base = ["prune", "--model", tiny_dir("llama"), "--nsamples", "2", "--seqlen", "16", "--out", out,
            "--data-dir", tmp_path]
    r = cli(*base, "--calibration", "text", "--lang", "klingon")
    assert r.returncode == 2 and "klingon" in r.stderr, r.stderr
    r = cli(*base, "--calibration", "text", "--lang", "fra_Latn")
    assert r.returncode == 2 and "fra_Latn" in r.stderr, r.stderr
    assert calls == [] and not out.exists()
