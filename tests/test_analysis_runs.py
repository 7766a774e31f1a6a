"""Analyses end to end on tiny random models: values checked against direct computations."""
import json
import math
import os

import pytest
import torch

from polyprune.analysis import Options, analyze
from polyprune.errors import UserError

TEXTS = {"eng_Latn": "The quick brown fox jumps over the lazy dog",
         "fra_Latn": "Le renard brun rapide saute par-dessus le chien",
         "deu_Latn": "Der schnelle braune Fuchs springt über den Hund"}


def _flores(root):
    d = root / "data" / "flores200" / "devtest"
    d.mkdir(parents=True)
    for code, t in TEXTS.items():
        words = t.split()
        lines = [" ".join(words[: 3 + (j % (len(words) - 2))]) + f" {j}" for j in range(10)]
        (d / f"{code}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "data"


def _run(root, model_dir, name, lang, seed=0, target=None, keep_stats=True, model=None):
    from polyprune.config import validate_config
    from polyprune.pipeline import run_prune
    f = root / f"{lang}.txt"
    f.write_text((TEXTS[lang] + " ") * 40, encoding="utf-8")
    cfg = validate_config({"model": str(model or model_dir), "method": "wanda", "sparsity": 0.5, "seed": seed,
                           "keep_stats": keep_stats,
                           "calibration": {"file": str(f), "langs": [lang], "target_lang": target,
                                           "nsamples": 3, "seqlen": 12}})
    return run_prune(cfg, root / name)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    os.environ["POLYPRUNE_PROGRESS"] = "0"
    from polyprune.testing import save_tiny
    root = tmp_path_factory.mktemp("analysis")
    model_dir = save_tiny("llama", root / "tiny")
    runs = {"eng0": _run(root, model_dir, "eng0", "eng_Latn", 0),
            "eng1": _run(root, model_dir, "eng1", "eng_Latn", 1),
            "fra": _run(root, model_dir, "fra", "fra_Latn", 0),
            "fra_eng": _run(root, model_dir, "fra_eng", "fra_Latn", 0, target="eng_Latn")}
    return root, model_dir, runs, _flores(root)


def _load(p):
    return json.loads(p.read_text(encoding="utf-8"))


def test_magnitudes_from_kept_stats(setup):
    from safetensors.torch import load_file
    from polyprune.analysis.magnitudes import overlap_ratio
    root, _, runs, data = setup
    out = root / "mag"
    res = analyze([runs["eng0"], runs["fra"], runs["fra_eng"]], "magnitudes", out, Options(beta=0.25, topk=5))
    s = res["magnitudes"]
    assert s["module"] == "self_attn.q_proj" and s["layers"] == [0, 1]
    rows = _load(out / "magnitudes_overlap.json")
    row = next(r for r in rows if r["layer"] == 1 and r["top_of"] == "file:fra>eng" and r["bottom_of"] == "file:eng")
    key = "model.layers.1.self_attn.q_proj.weight::target::scaler_row"
    a = load_file(str(runs["fra_eng"] / "stats.safetensors"))[key].sqrt()
    b = load_file(str(runs["eng0"] / "stats.safetensors"))[key].sqrt()
    assert row["overlap"] == pytest.approx(overlap_ratio(a, b, 0.25))
    uniq = _load(out / "magnitudes_unique.json")
    assert {r["k"] for r in uniq} == {20, 32}  # k capped at the 32 features of the tiny model
    assert all(set(r) >= {"absent_from_file:fra", "absent_from_file:eng", "absent_from_all"} for r in uniq)
    assert all(r["absent_from_all"] <= min(r["absent_from_file:fra"], r["absent_from_file:eng"]) for r in uniq)
    for f in ("magnitudes_quadrants.png", "magnitudes_quadrants.pdf", "magnitudes_overlap_layers.png"):
        assert (out / "figures" / f).stat().st_size > 1000


def test_mask_iou_matches_direct_count(setup):
    from polyprune.masks import load_masks
    root, _, runs, _ = setup
    out = root / "iou"
    res = analyze([runs["eng0"], runs["eng1"], runs["fra"]], ["mask_iou"], out)["mask_iou"]
    assert res["groups"] == {"file:eng": 2, "file:fra": 1}
    m0, m1, mf = load_masks(runs["eng0"]), load_masks(runs["eng1"]), load_masks(runs["fra"])
    inter = union = 0
    for k in m0:
        a = ~m0[k] & ~m1[k]
        b = ~mf[k]
        inter += int((a & b).sum())
        union += int((a | b).sum())
    assert res["overall"]["file:eng vs file:fra"] == pytest.approx(inter / union)
    assert (out / "mask_iou_seeds.csv").is_file() and (out / "figures" / "mask_iou_overall.png").is_file()


def test_snr_matches_unpadded_forward(setup):
    """Batched (padded) forwards give the same pruning error as one sentence at a time."""
    from polyprune.analysis import hidden
    from polyprune.analysis.common import eval_texts
    from polyprune.analysis.fidelity import FidelityAccumulator
    from polyprune.evaluate.scoring import encode
    from polyprune.model import load_model
    from polyprune.run import apply_run
    root, model_dir, runs, data = setup
    hidden._CACHE.clear()
    opts = Options(langs=["eng_Latn"], data_dir=str(data), nsentences=5, batch_size=3)
    res = analyze([runs["fra"]], "snr", None, opts)["snr"]
    table = _load(runs["fra"] / "analysis" / "snr_per_layer.json")
    assert (runs["fra"] / "figures" / "snr_layers.png").is_file()
    dense, tok = load_model(str(model_dir))
    pruned, _ = load_model(str(model_dir))
    apply_run(pruned, runs["fra"])
    acc = FidelityAccumulator()
    for t in eval_texts("eng_Latn", 5, data):  # one sentence at a time: no pads; start token dropped
        ids = torch.tensor([encode(tok, t)])
        hd = dense(ids, output_hidden_states=True).hidden_states[1]  # layer 0's output
        hp = pruned(ids, output_hidden_states=True).hidden_states[1]
        acc.add(hd[0, 1:], hp[0, 1:])
    assert table[0]["layer"] == 0 and table[0]["tokens"] == acc.n
    assert table[0]["pruning_error"] == pytest.approx(acc.pruning_error, rel=1e-4)
    assert table[0]["snr_db"] == pytest.approx(acc.snr_db, rel=1e-4)
    assert math.isfinite(res["summary"][0]["snr_db_mean"])
    # the per-language table and the analysis summary are separate files; the report reads the table
    per_lang = _load(runs["fra"] / "analysis" / "snr_per_lang.json")
    assert per_lang == _load(runs["fra"] / "analysis" / "snr_summary.json")["summary"]
    from polyprune.report import build_tables, collect
    snr = {t.task: t for t in build_tables(collect(runs["fra"]))}["snr"]
    assert snr.rows[0].values["eng_Latn"] == pytest.approx(res["summary"][0]["snr_db_mean"])


def test_lape_counts_and_lsar(setup):
    from polyprune.analysis.hidden import Forwarder
    from polyprune.analysis.common import eval_texts
    from polyprune.model import load_model
    root, model_dir, runs, data = setup
    model, tok = load_model(str(model_dir))
    fw = Forwarder(model, tok, "product", batch_size=4)
    texts = eval_texts("fra_Latn", 6, data)
    got = fw.run(fw.encode(texts), keep_states=False)
    want = torch.zeros(2, 64, dtype=torch.float64)
    tokens = 0
    for t in texts:
        x = {}
        hs = [model.model.layers[i].mlp.down_proj.register_forward_pre_hook(
            lambda m, inp, _i=i: x.__setitem__(_i, inp[0])) for i in range(2)]
        model(torch.tensor([fw.encode([t])[0]]))
        for h in hs:
            h.remove()
        for i in range(2):
            want[i] += (x[i][0, 1:] > 0).sum(0)
        tokens += x[0].shape[1] - 1
    assert got.tokens == tokens
    assert torch.equal(got.active, want)
    act = Forwarder(model, tok, "act", batch_size=4).run(fw.encode(texts), keep_states=False)
    assert act.tokens == tokens and not torch.equal(act.active, want)  # SiLU(gate) > 0 differs from the product

    out = root / "hs"
    opts = Options(langs=["eng_Latn", "fra_Latn", "deu_Latn"], data_dir=str(data), nsentences=6, top_rate=0.05)
    res = analyze([runs["eng0"], runs["fra"]], ["lsar", "lape"], out, opts)
    lape_rows = _load(out / "lape_runs.json")
    assert {r["run"] for r in lape_rows} == {"file:eng", "file:fra"}
    for r in lape_rows:
        assert r["still_specific"] + r["lost"] == r["neurons"]
    assert sum(res["lape"]["dense_neurons_per_lang"].values()) > 0
    lsar_rows = _load(out / "lsar.json")
    assert len(lsar_rows) == 2 * 3 * 2
    assert all(r["delta_agnostic"] > 0 and r["delta_specific"] >= 0 for r in lsar_rows)
    assert res["lsar"]["rank"] == 2
    for f in ("lsar_layers.png", "lape_dense.png", "lape_runs.pdf"):
        assert (out / "figures" / f).is_file()


def test_restoring_every_layer_gives_dense_perplexity(setup):
    root, _, runs, data = setup
    opts = Options(langs=["eng_Latn"], data_dir=str(data), nsentences=4, restore="first,0+1,each")
    analyze([runs["fra_eng"]], "restoration", None, opts)
    rows = _load(runs["fra_eng"] / "analysis" / "restoration.json")
    full = next(r for r in rows if r["restored"] == "0+1")
    assert full["ppl"] == pytest.approx(full["ppl_dense"], rel=1e-6)
    assert full["recovered"] == pytest.approx(1.0, abs=1e-5)
    assert {r["restored"] for r in rows} == {"none (pruned)", "first", "0+1", "layer 1"}  # first == layer 0
    assert (runs["fra_eng"] / "figures" / "restoration.png").is_file()


def test_bad_input(setup, tiny_dir, tmp_path):
    from typer.testing import CliRunner
    from polyprune.analysis.restoration import parse_restore
    root, model_dir, runs, data = setup
    nostats = _run(tmp_path, model_dir, "nostats", "eng_Latn", keep_stats=False)
    with pytest.raises(UserError, match="--keep-stats"):
        analyze([runs["eng0"], nostats], "magnitudes", tmp_path / "o1")
    other = _run(tmp_path, model_dir, "other", "deu_Latn", model=tiny_dir("qwen2"))
    with pytest.raises(UserError, match="different base models"):
        analyze([runs["eng0"], other], "mask_iou", tmp_path / "o2")
    with pytest.raises(UserError, match="at least 2 languages"):
        analyze([runs["eng0"]], "lsar", None, Options(langs=["eng_Latn"], data_dir=str(data)))
    with pytest.raises(UserError, match="two different calibrations"):
        analyze([runs["eng0"], runs["eng1"]], "mask_iou", tmp_path / "o3")
    with pytest.raises(UserError, match="--out"):
        analyze([runs["eng0"], runs["fra"]], "snr")
    assert parse_restore("first,last,first+last,-1", 3) == [("first", [0]), ("last", [2]), ("first+last", [0, 2])]
    with pytest.raises(UserError):
        parse_restore("7", 3)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()
    from polyprune.cli import app
    import polyprune.commands  # noqa: F401
    r = CliRunner().invoke(app, ["analyze", str(runs["eng0"]), "--what", "nope"])
    assert r.exit_code != 0 and isinstance(r.exception, UserError) and "unknown analysis" in str(r.exception)
