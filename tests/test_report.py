"""Reports from fixture results: values, seeds, best-in-bold, significance markers, formats, figures."""
import csv
import io
import json
import math
from pathlib import Path

import pytest

from polyprune.errors import UserError
from polyprune.report import build_tables, collect, table_csv, table_latex, table_markdown, write_report

N = 200


def _acc_result(per_lang: dict[str, list[int]]) -> dict:
    return {"task": "xnli", "target": "m", "settings": {},
            "primary": {"metric": "accuracy", "higher_is_better": True,
                        "per_lang": {k: sum(v) / len(v) for k, v in per_lang.items()},
                        "average": None},
            "metrics": {k: {} for k in per_lang}, "per_example": per_lang,
            "examples": {k: [{"id": i} for i in range(len(v))] for k, v in per_lang.items()}}


def _ppl_result(per_lang: dict[str, float]) -> dict:
    per_ex = {k: [{"nll": math.log(v) * 10, "tokens": 10}] * 20 for k, v in per_lang.items()}
    return {"task": "perplexity", "target": "m", "settings": {},
            "primary": {"metric": "ppl", "higher_is_better": False, "per_lang": dict(per_lang), "average": None},
            "metrics": {}, "per_example": per_ex, "examples": {k: [{"id": i} for i in range(20)] for k in per_lang}}


def _flip(base: list[int], n: int) -> list[int]:
    """``base`` with its first ``n`` zeros turned into ones."""
    out, left = list(base), n
    for i, v in enumerate(out):
        if v == 0 and left:
            out[i], left = 1, left - 1
    return out


def _write_cells(root: Path, cells: list[tuple[dict, dict[str, dict]]]) -> None:
    listing = []
    for i, (labels, results) in enumerate(cells):
        d = root / f"cell{i}"
        (d / "results").mkdir(parents=True)
        (d / "cell.json").write_text(json.dumps({"id": f"h{i}", "labels": labels}))
        (d / "DONE").write_text("{}")
        for name, res in results.items():
            (d / "results" / f"{name}.json").write_text(json.dumps(res))
        listing.append({"id": f"h{i}", "dir": d.name, "kind": "dense" if labels["method"] == "dense" else "prune",
                        "labels": labels})
    (root / "grid.json").write_text(json.dumps({"name": "fixture", "cells": listing}))


def L(method, cal="-", seed="0", sparsity="0.5", model="m"):
    if method == "dense":
        return {"model": model, "method": "dense", "sparsity": "-", "calibration": "-", "seed": "-"}
    return {"model": model, "method": method, "sparsity": sparsity, "calibration": cal, "seed": seed}


@pytest.fixture
def runs(tmp_path) -> Path:
    dense = [i % 2 for i in range(N)]  # 50 % correct
    cells = [
        (L("dense"), {"xnli": _acc_result({"eng_Latn": dense, "fra_Latn": dense}),
                      "perplexity": _ppl_result({"eng_Latn": 20.0, "fra_Latn": 30.0})}),
        (L("wanda", "eng"), {"xnli": _acc_result({"eng_Latn": _flip(dense, 60), "fra_Latn": dense}),
                             "perplexity": _ppl_result({"eng_Latn": 25.0, "fra_Latn": 45.0})}),
        (L("wanda", "fra", "0"), {"xnli": _acc_result({"eng_Latn": _flip(dense, 2), "fra_Latn": _flip(dense, 70)}),
                                  "perplexity": _ppl_result({"eng_Latn": 28.0, "fra_Latn": 36.0})}),
        (L("wanda", "fra", "1"), {"xnli": _acc_result({"eng_Latn": _flip(dense, 4), "fra_Latn": _flip(dense, 60)}),
                                  "perplexity": _ppl_result({"eng_Latn": 30.0, "fra_Latn": 38.0})}),
        (L("magnitude"), {"xnli": _acc_result({"eng_Latn": [0] * N, "fra_Latn": [0] * N}),
                          "perplexity": _ppl_result({"eng_Latn": 90.0, "fra_Latn": 200.0})}),
    ]
    _write_cells(tmp_path, cells)
    return tmp_path


def _rows(table):
    return {r.label: r for r in table.rows}


def test_values_seeds_bold_and_significance(runs):
    tables = {t.task: t for t in build_tables(collect(runs))}
    x = tables["xnli"]
    assert x.langs == ["eng_Latn", "fra_Latn"] and x.columns[-1] == "avg"
    rows = _rows(x)
    assert list(rows) == ["m · dense", "m · wanda · 0.5 · eng", "m · wanda · 0.5 · fra", "m · magnitude · 0.5"]
    eng, fra, dense, mag = rows["m · wanda · 0.5 · eng"], rows["m · wanda · 0.5 · fra"], rows["m · dense"], \
        rows["m · magnitude · 0.5"]
    assert dense.is_baseline and not eng.is_baseline
    assert eng.values["eng_Latn"] == pytest.approx(0.8) and eng.values["fra_Latn"] == pytest.approx(0.5)
    # two seeds averaged: (0.5 + 70/200 + 0.5 + 60/200) / 2 on fra
    assert fra.values["fra_Latn"] == pytest.approx(0.5 + 65 / 200) and len(fra.results) == 2
    assert fra.std["fra_Latn"] == pytest.approx(math.sqrt(2 * (5 / 200) ** 2))
    assert eng.values["avg"] == pytest.approx(0.65)
    # significance against dense: +30 points on 200 examples is significant, identical is not, +1-2 is not
    assert eng.marks == {"eng_Latn": "†"} and eng.p_values["fra_Latn"] == 1.0
    assert fra.marks == {"fra_Latn": "†"}  # significant in both seeds
    assert "eng_Latn" not in fra.marks and fra.p_values["eng_Latn"] > 0.1
    assert mag.marks == {"eng_Latn": "†", "fra_Latn": "†"}
    assert dense.marks == {}
    # best per column (higher is better) is bold
    assert "eng_Latn" in eng.bold and "fra_Latn" in fra.bold and "avg" in fra.bold and not mag.bold
    assert not dense.bold  # the baseline is not a contender
    p = tables["perplexity"]  # lower is better
    assert _rows(p)["m · wanda · 0.5 · eng"].bold == {"eng_Latn"}
    assert _rows(p)["m · wanda · 0.5 · fra"].bold == {"fra_Latn", "avg"} and not _rows(p)["m · dense"].bold
    assert _rows(p)["m · magnitude · 0.5"].values["avg"] == pytest.approx(145.0)


def test_formats(runs):
    (x,) = [t for t in build_tables(collect(runs)) if t.task == "xnli"]
    md = table_markdown(x)
    lines = md.splitlines()
    assert lines[0] == "| Method | Calibration | eng | fra | Avg. |"
    assert "| wanda | eng | **0.800†** | 0.500 | 0.650 |" in lines
    assert "| magnitude | - | 0.000† | 0.000† | 0.000 |" in lines
    assert "p < 0.1" in md
    tex = table_latex(x)
    assert r"\textbf{0.800}$^\dagger$" in tex and r"\toprule" in tex and r"\end{tabular}" in tex
    rows = list(csv.DictReader(io.StringIO(table_csv(x))))
    e = next(r for r in rows if r["calibration"] == "eng")
    assert float(e["eng_Latn"]) == pytest.approx(0.8) and float(e["eng_Latn_p"]) < 0.1 and e["baseline"] == "0"
    f = next(r for r in rows if r["calibration"] == "fra")
    assert f["seeds"] == "2" and float(f["fra_Latn_std"]) > 0


def test_named_baseline(runs):
    (x,) = [t for t in build_tables(collect(runs), baseline="wanda · 0.5 · eng") if t.task == "xnli"]
    rows = _rows(x)
    assert rows["m · wanda · 0.5 · eng"].is_baseline and not rows["m · dense"].is_baseline
    assert rows["m · dense"].marks == {"eng_Latn": "†"}
    with pytest.raises(UserError, match="--baseline 'nope' matches no row"):
        build_tables(collect(runs), baseline="nope")


def test_write_report_files_and_figures(runs):
    rep = write_report(runs)
    d = runs / "report"
    for task in ("xnli", "perplexity"):
        for ext in ("csv", "md", "tex"):
            assert (d / f"{task}.{ext}").is_file()
    names = sorted(p.name for p in (d / "figures").iterdir())
    assert "perplexity-m-heatmap.png" in names and "perplexity-m-bars.pdf" in names
    assert (d / "report.md").read_text().count("![") == len([n for n in names if n.endswith(".png")])
    assert rep["dir"] == d
    write_report(runs, figures=False)  # rewriting replaces the folder atomically
    assert not (d / "figures").exists()
    assert not [p for p in runs.iterdir() if p.name.startswith(".")]


def test_plain_run_folders_and_empty(tmp_path):
    import yaml
    run = tmp_path / "r1"
    (run / "results").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "org/m", "method": "wanda", "sparsity": 0.5,
                                                     "pattern": "2:4", "seed": 3,
                                                     "calibration": {"recipe": "text", "langs": ["swh_Latn"]}}))
    (run / "results" / "xnli.json").write_text(json.dumps(_acc_result({"eng_Latn": [1, 0]})))
    (e,) = collect(tmp_path)
    assert e.labels == {"model": "m", "method": "wanda", "sparsity": "2:4", "calibration": "text:swh",
                        "variant": "-"} and e.seed == "3"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no finished results"):
        collect(empty)


def test_lrp2_result_is_a_row_of_its_task(tmp_path):
    dense = [i % 2 for i in range(N)]
    lrp2 = _acc_result({"fra_Latn": _flip(dense, 50)})
    lrp2["task"] = "xnli-lrp2"
    _write_cells(tmp_path, [(L("dense"), {"xnli": _acc_result({"eng_Latn": dense, "fra_Latn": dense}),
                                          "xnli-lrp2": lrp2})])
    (x,) = build_tables(collect(tmp_path))
    assert x.langs == ["eng_Latn", "fra_Latn"]  # the task's own order, though the variant's file is read first
    assert x.task == "xnli" and [r.label for r in x.rows] == ["m · dense", "m · lrp2"]
    assert x.rows[0].is_baseline and x.rows[1].marks == {"fra_Latn": "†"}


def test_analysis_tables_from_cells_old_and_new_layout(tmp_path):
    """Per-language SNR tables of cells become report tables (no significance: no per-example data);
    runs analysed before the table got its own file are read from the analysis summary."""
    recs = [{"run": "x", "lang": "eng_Latn", "snr_db_mean": 15.0, "pruning_error_mean": 6.5e-05, "tokens": 9},
            {"run": "x", "lang": "fra_Latn", "snr_db_mean": 12.0, "pruning_error_mean": 9.0e-05, "tokens": 9}]
    worse = [dict(r, snr_db_mean=r["snr_db_mean"] - 1, pruning_error_mean=r["pruning_error_mean"] * 2) for r in recs]
    worse[1]["snr_db_mean"] = "inf"  # as written for an unpruned matrix set
    _write_cells(tmp_path, [(L("dense"), {"perplexity": _ppl_result({"eng_Latn": 20.0, "fra_Latn": 30.0})}),
                            (L("wanda", "eng"), {}), (L("wanda", "fra"), {})])
    (tmp_path / "cell1" / "analysis").mkdir()
    (tmp_path / "cell1" / "analysis" / "snr_per_lang.json").write_text(json.dumps(recs))
    (tmp_path / "cell2" / "analysis").mkdir()  # old layout: only the summary file, records under "summary"
    (tmp_path / "cell2" / "analysis" / "snr_summary.json").write_text(json.dumps({"analysis": "snr",
                                                                                 "summary": worse}))
    tables = {t.task: t for t in build_tables(collect(tmp_path))}
    assert set(tables) == {"perplexity", "snr", "pruning_error"}
    snr, err = tables["snr"], tables["pruning_error"]
    assert [r.labels["calibration"] for r in snr.rows] == ["eng", "fra"]
    assert snr.higher_is_better and not err.higher_is_better
    assert snr.rows[0].values == {"eng_Latn": 15.0, "fra_Latn": 12.0, "avg": 13.5}
    assert snr.rows[1].values == {"eng_Latn": 14.0, "fra_Latn": None, "avg": None}  # "inf" shows as missing
    assert snr.rows[0].bold == {"eng_Latn", "fra_Latn", "avg"} and err.rows[0].bold == {"eng_Latn", "fra_Latn", "avg"}
    assert not any(r.marks for r in snr.rows)
    md = table_markdown(err)
    assert "6.5e-05" in md and "no significance test" in md and "†" not in md


def test_analysis_output_rejects_a_name_written_twice(tmp_path):
    from polyprune.analysis.common import Output
    o = Output(tmp_path / "analysis", tmp_path / "figures")
    o.table("snr_per_lang", [{"lang": "eng_Latn"}])
    with pytest.raises(RuntimeError, match="written twice"):
        o.json("snr_per_lang", {})
    o.discard()


def test_heatmap_colour_and_number_show_the_same_change():
    """A cell's printed change and its colour come from one number: (v − ref)/|ref| in %, with the
    data's sign; red means worse in both metric directions; languages named in English."""
    import matplotlib

    from polyprune.report import Row, heatmap_changes, heatmap_scale, lang_label, relative_change
    base = Row(key=(), labels={}, values={"eng_Latn": 20.0, "avg": 40.0}, is_baseline=True)
    a = Row(key=(), labels={}, values={"eng_Latn": 25.0, "avg": 30.0})
    assert heatmap_changes([a], base, ["eng_Latn", "avg"], False) == [[25.0, -25.0]]  # 20→25: +25 %
    assert relative_change(None, 1.0) != relative_change(None, 1.0)  # NaN
    # without a baseline: against the column's best row (lowest perplexity)
    b = Row(key=(), labels={}, values={"eng_Latn": 50.0})
    assert heatmap_changes([a, b], None, ["eng_Latn"], False) == [[0.0], [100.0]]
    def red(cmap, norm, x):
        r, _, b, _ = matplotlib.colormaps[cmap](norm(x))
        return r > b
    cmap, norm = heatmap_scale([25.0, -10.0], higher_is_better=False)  # perplexity up = worse = red
    assert red(cmap, norm, 25.0) and not red(cmap, norm, -10.0)
    cmap, norm = heatmap_scale([25.0, -10.0], higher_is_better=True)  # accuracy down = worse = red
    assert red(cmap, norm, -10.0) and not red(cmap, norm, 25.0)
    cmap, norm = heatmap_scale([5.0, 30.0], higher_is_better=False)  # all worse: one-sided red, 0 = white
    assert red(cmap, norm, 30.0) and norm.vmin == 0.0
    assert [lang_label(x) for x in ("eng_Latn", "eng", "sw", "deu+eng", "avg", "all7")] == \
        ["English", "English", "Swahili", "German+English", "average", "all7"]
