"""Exports load where people work: every format through plain transformers in a subprocess (no
polyprune import), logits compared with the run rebuilt from base × masks (× kept values); the
archives cannot be loaded by mistake; packed masks; base-model hashes; bad input."""
import json
import os

import pytest
import torch

import forked
from test_formats import make_run  # one run builder for both export suites
from polyprune.errors import UserError
from polyprune.formats import export_compressed

IDS = [[2, 17, 40, 99, 123, 200, 5, 310, 77, 8]]

# runs in its own process without polyprune: only transformers (+ compressed-tensors)
LOADER = r"""
import json, sys
import torch
assert "polyprune" not in sys.modules
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
assert "polyprune" not in sys.modules
with torch.no_grad():
    logits = model(torch.tensor(json.loads(sys.argv[2]))).logits
torch.save(logits, sys.argv[3])
print("classes", sorted({type(m).__name__ for m in model.modules()}))
"""


def plain_transformers(folder, out):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return forked.run(["-c", LOADER, str(folder), json.dumps(IDS), str(out)], env=env, cwd=str(out.parent))



def rebuilt_logits(run, dtype="float32"):
    """The pruned model as polyprune rebuilds it: base model × masks (× kept values)."""
    from polyprune.run import load_run_or_model
    model = load_run_or_model(str(run), dtype, "cpu")[0]
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.float()


# (method, pattern, method options, requested format, stored format, max |Δ logits| allowed)
CASES = [
    ("wanda", "unstructured", {}, "auto", "dense", 0.0),
    ("sparsegpt", "unstructured", {}, "dense", "dense", 0.0),
    ("gptq", "unstructured", {"bits": 4, "group_size": 16}, "auto", "pack-quantized", 1e-5),
    ("gptq", "unstructured", {"bits": 8, "group_size": -1}, "int-quantized", "int-quantized", 1e-5),
    ("sparsegpt-gptq", "2:4", {"bits": 4, "group_size": 32}, "auto", "pack-quantized", 1e-5),
]


@pytest.mark.parametrize("method,pattern,opts,fmt,stored,tol", CASES)
def test_plain_transformers_loads_the_pruned_model(tiny_dir, tmp_path, method, pattern, opts, fmt, stored, tol):
    run = make_run(tiny_dir, tmp_path, "run", method, pattern, **opts)
    rep = export_compressed(run, tmp_path / "x", fmt)
    assert rep["format"] == stored
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    if stored == "dense":  # a plain checkpoint: nothing for a quantisation backend to pick up
        assert "quantization_config" not in config
        assert {"generation_config.json", "tokenizer.json", "README.md"} <= {p.name for p in (tmp_path / "x").iterdir()}
    else:
        qc = config["quantization_config"]
        assert qc["format"] == stored and qc["config_groups"]["group_0"]["format"] == stored
    r = plain_transformers(tmp_path / "x", tmp_path / "logits.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MISSING" not in r.stderr and "UNEXPECTED" not in r.stderr, r.stderr[-2000:]
    theirs = torch.load(tmp_path / "logits.pt")
    ours = rebuilt_logits(run)
    diff = float((theirs - ours).abs().max())
    assert diff <= tol, diff
    if tol == 0.0:  # dense fp32: the same bits
        assert torch.equal(theirs, ours)


def test_dense_bf16_export_is_the_rebuilt_model_in_bf16(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from polyprune.run import load_run_or_model
    run = make_run(tiny_dir, tmp_path, "run", "sparsegpt")
    export_compressed(run, tmp_path / "x", dtype="bfloat16")
    sd = load_file(str(tmp_path / "x" / "model.safetensors"))
    ours = load_run_or_model(str(run), "float32", "cpu")[0].state_dict()
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert all(torch.equal(v, ours[k].to(torch.bfloat16)) for k, v in sd.items())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert float((sd[q] == 0).float().mean()) >= 0.5  # the pruned zeros are in place
    r = plain_transformers(tmp_path / "x", tmp_path / "logits.pt")
    assert r.returncode == 0, r.stderr[-2000:]
    model = load_run_or_model(str(run), "float32", "cpu")[0]
    with torch.no_grad():  # the rebuilt weights rounded to bf16, fp32 compute as in the loader
        for prm in model.parameters():
            prm.copy_(prm.to(torch.bfloat16).float())
        ours = model(torch.tensor(IDS)).logits
    assert torch.equal(torch.load(tmp_path / "logits.pt"), ours)


@pytest.mark.parametrize("method,pattern,fmt", [("wanda", "unstructured", "sparse-bitmask"),
                                                ("wanda", "2:4", "sparse-24-bitmask")])
def test_archives_cannot_be_misloaded_and_read_back_in_polyprune(tiny_dir, tmp_path, method, pattern, fmt):
    import polyprune as pp
    run = make_run(tiny_dir, tmp_path, "run", method, pattern)
    rep = export_compressed(run, tmp_path / "a", fmt)
    assert rep["format"] == fmt and "not loadable" in rep["load"]["transformers"]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_type"] == "polyprune-archive" and config["architectures"] == []
    assert not list((tmp_path / "a").glob("*.safetensors"))  # nothing where loaders look for weights
    r = plain_transformers(tmp_path / "a", tmp_path / "logits.pt")
    assert r.returncode != 0 and not (tmp_path / "logits.pt").exists()  # loud, not random weights
    assert "polyprune-archive" in r.stderr
    model, tok = pp.load_model(str(tmp_path / "a"))
    assert tok is not None
    with torch.no_grad():
        assert torch.equal(model(torch.tensor(IDS)).logits, rebuilt_logits(run))


def test_cli_export_prints_ratios_and_load_lines(tiny_dir, tmp_path):
    from typer.testing import CliRunner
    from polyprune import commands  # noqa: F401
    from polyprune.cli import app
    run = make_run(tiny_dir, tmp_path, "run", "wanda")
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "x" / "compression_report.json").read_text())
    assert rep["on_disk_bytes"] == (tmp_path / "x" / "model.safetensors").stat().st_size
    assert rep["ratio_bf16"] == pytest.approx(2 * rep["ratio_fp32"])  # the tiny model is all float
    assert f"{rep['ratio_fp32']:.3f}× the dense fp32 size" in r.output and f"{rep['ratio_bf16']:.3f}× bf16" in r.output
    assert f"transformers: python -c \"from transformers import AutoModelForCausalLM; " \
           f"model = AutoModelForCausalLM.from_pretrained('{tmp_path / 'x'}')\"" in r.output
    assert f"vllm: vllm serve {tmp_path / 'x'}" in r.output


@pytest.mark.parametrize("args,message", [
    (["--format", "zip"], "unknown format 'zip'"),
    (["--format", "sparse-24-bitmask"], "needs 2:4 masks but this run is not 2:4"),
    (["--format", "pack-quantized"], "not quantised"),
])
def test_cli_export_bad_input(tiny_dir, tmp_path, args, message):
    run = make_run(tiny_dir, tmp_path, "run", "wanda")
    r = forked.polyprune("export", str(run), "--out", str(tmp_path / "x"), *args)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("run", "cal.txt")] == []


def test_export_refuses_existing_out_wrong_base_and_foreign_masks(tiny_dir, tmp_path):
    import shutil
    import yaml
    from polyprune.masks import load_masks, save_masks
    run = make_run(tiny_dir, tmp_path, "run", "wanda")
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="already exists"):
        export_compressed(run, tmp_path / "x")
    # the base model changed under the run: both hashes named
    base = tmp_path / "base"
    shutil.copytree(tiny_dir("llama"), base)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    recorded = cfg["base_hash"]
    cfg["model"] = str(base)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    from safetensors.torch import load_file, save_file
    sd = load_file(str(base / "model.safetensors"))
    sd["model.norm.weight"] = sd["model.norm.weight"] + 1
    save_file(sd, str(base / "model.safetensors"), metadata={"format": "pt"})
    from polyprune.run import base_hash
    with pytest.raises(UserError, match=f"has hash {base_hash(base)} but .* was pruned from {recorded}"):
        export_compressed(run, tmp_path / "y")
    # masks of another model: a mask shape that does not fit
    cfg["model"] = str(tiny_dir("llama"))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    masks = load_masks(run)
    k = "model.layers.0.mlp.up_proj.weight"
    masks[k] = masks[k][:, :16]
    save_masks(masks, run / "masks.safetensors")
    with pytest.raises(UserError, match=f"mask {k} has shape \\(64, 16\\).*another model"):
        export_compressed(run, tmp_path / "y")
    masks["model.layers.9.mlp.up_proj.weight"] = masks.pop(k)
    save_masks(masks, run / "masks.safetensors")
    with pytest.raises(UserError, match="model.layers.9.mlp.up_proj.weight is not in the checkpoint"):
        export_compressed(run, tmp_path / "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "cal.txt", "run", "x"]


def test_model_card_of_a_run_with_two_evaluations(tiny_dir, tmp_path, data_dir):
    import yaml
    from polyprune.config import validate_config
    from polyprune.evaluate import run_eval
    from polyprune.pipeline import run_prune
    cfg = validate_config({"model": str(tiny_dir("llama")), "method": "wanda", "sparsity": 0.5,
                           "calibration": {"recipe": "monolingual", "langs": ["fra_Latn", "deu_Latn"], "nsamples": 2,
                                           "seqlen": 16, "data_dir": str(data_dir)}})
    run = run_prune(cfg, tmp_path / "run")
    run_eval(str(run), "perplexity", ["fra_Latn", "deu_Latn"], None, data_dir, 3)
    run_eval(str(run), "xnli", ["fr", "sw"], None, data_dir, 3)
    run_eval(str(tiny_dir("llama")), "perplexity", ["fra_Latn", "deu_Latn"], run / "results" / "dense", data_dir, 3)
    export_compressed(run, tmp_path / "x", dtype="bfloat16")
    text = (tmp_path / "x" / "README.md").read_text()
    head, body = text.split("---\n", 2)[1:]
    front = yaml.safe_load(head)
    assert front["base_model"] == str(tiny_dir("llama")) and front["library_name"] == "polyprune"
    assert front["tags"] == ["pruned", "polyprune", "wanda"]
    assert front["language"] == ["fr", "de", "sw"]  # calibration languages first, then evaluation ones
    ppl = json.loads((run / "results" / "perplexity.json").read_text())
    dense = json.loads((run / "results" / "dense" / "perplexity.json").read_text())
    xnli = json.loads((run / "results" / "xnli.json").read_text())
    m, d = ppl["metrics"]["fra_Latn"], dense["metrics"]["fra_Latn"]
    assert (f"| fra_Latn | {m['ppl']:.4g} | {d['ppl']:.4g} | {m['bpb']:.4g} | {d['bpb']:.4g} |") in body
    assert f"| swh_Latn | {xnli['metrics']['swh_Latn']['accuracy']:.4g} |" in body
    assert "no dense baseline found" in body.split("### xnli")[1]
    rec = json.loads((run / "record.json").read_text())
    for lang, n in rec["calibration"]["tokens_per_set_and_language"]["target"].items():
        assert f"| target | {lang} | {n} |" in body
    assert "| 0 | 0.5 | 0.5 | 0.5 |" in body and "| 1 | 0.5 | 0.5 | 0.5 |" in body  # per-layer sparsity
    assert (f"polyprune prune --model {tiny_dir('llama')} --method wanda --sparsity 0.5 --calibration monolingual "
            f"--lang fra_Latn,deu_Latn --data-dir {data_dir} --nsamples 2 --seqlen 16 --seed 0 --out RUN") in body
    assert "polyprune export RUN --format dense --dtype bfloat16 --out OUT" in body
    assert "exported with polyprune 0.1.0" in body
    (tmp_path / "card.md").write_text(text)  # for a look by eye


def test_streamed_run_exports_the_same_checkpoint(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    mem = make_run(tiny_dir, tmp_path, "mem", "sparsegpt")
    from polyprune.config import validate_config
    from polyprune.pipeline import run_prune
    cfg = validate_config({"model": str(tiny_dir("llama")), "method": "sparsegpt", "offload": True,
                           "calibration": {"file": str(tmp_path / "cal.txt"), "nsamples": 2, "seqlen": 16}})
    streamed = run_prune(cfg, tmp_path / "str")
    export_compressed(mem, tmp_path / "a")
    export_compressed(streamed, tmp_path / "b")
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_card_finds_the_dense_cell_of_a_grid(tmp_path):
    from polyprune.card import dense_results
    grid = tmp_path / "grid"
    res = {"task": "perplexity", "primary": {"metric": "ppl", "per_lang": {"fra_Latn": 12.5}, "average": 12.5},
           "metrics": {"fra_Latn": {"ppl": 12.5}}}
    for cell, kind, model, done in (("dense-a", "dense", "other", True), ("dense-b", "dense", "m", False),
                                    ("dense-c", "dense", "m", True), ("wanda-d", "prune", "m", True)):
        (grid / cell / "results").mkdir(parents=True)
        (grid / cell / "cell.json").write_text(json.dumps({"kind": kind, "config": {"model": model}}))
        (grid / cell / "results" / "perplexity.json").write_text(json.dumps({**res, "cell": cell}))
        if done:
            (grid / cell / "DONE").write_text("{}")
    # the finished dense cell of the same model, not another model's nor an unfinished one
    assert dense_results(grid / "wanda-d", "m")["perplexity"]["cell"] == "dense-c"
    assert dense_results(grid / "wanda-d", "nope") == {}


def test_eval_reads_an_archive(tiny_dir, tmp_path, data_dir):
    run = make_run(tiny_dir, tmp_path, "run", "sparsegpt")
    export_compressed(run, tmp_path / "a", "sparse-bitmask")
    outs = []
    for target, out in ((tmp_path / "a", tmp_path / "ra"), (run, None)):
        r = forked.polyprune("eval", str(target), "--task", "perplexity", "--lang", "fra_Latn", "--limit", "2",
                             "--data-dir", str(data_dir), *(["--out", str(out)] if out else []))
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(json.loads(((out or run / "results") / "perplexity.json").read_text())["primary"]["per_lang"])
    assert outs[0] == outs[1]  # the archive evaluates as the run it came from
