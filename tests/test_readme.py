"""The README's walkthrough, run as written, in order, offline, at small sizes.

Rewrite rules (all applied to the command lines parsed from the README's ```bash blocks, so the
README itself cannot drift from what works):

* only lines starting with ``polyprune`` run (``make …`` lines are the set-up); ``# …`` is a comment;
* ``--nsamples`` → 4, ``--seqlen`` → 16, ``--limit`` → 3, ``--nsentences`` → 4 (added to ``prune``
  and ``demo`` where the README relies on the defaults);
* the model: ``embedded`` (``--model embedded``, ``eval embedded``, the model of ``examples/grid.yaml``,
  and ``prune`` / ``demo`` without ``--model``) becomes a saved tiny seeded Llama, or the model in
  ``$POLYPRUNE_README_MODEL`` (e.g. ``embedded`` to run the walkthrough on the real model);
* the commands run in a scratch copy of the repository's ``examples/`` with the offline data beside
  it as ``../shared/data`` (found by the data rule, as in a checkout next to the shared data).
"""
import os
import re
import shlex
import shutil
from pathlib import Path

import forked

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"--nsamples": "4", "--seqlen": "16", "--limit": "3", "--nsentences": "4"}


def readme_commands(text: str) -> list[list[str]]:
    """Argument lists of the ``polyprune`` lines of the README's bash blocks, in order."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.strip().startswith("polyprune "):
                cmds.append(shlex.split(line, comments=True)[1:])
    return cmds


def small(args: list[str], model: str) -> list[str]:
    """The rewrite rules of the module docstring."""
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a in SMALL:
            out[i + 1] = SMALL[a]
        if a == "--model" and out[i + 1] == "embedded":
            out[i + 1] = model
    if out[:1] == ["eval"] and out[1] == "embedded":
        out[1] = model
    if out[:1] in (["prune"], ["demo"]) and "--help" not in out:
        wanted = {"--nsamples": SMALL["--nsamples"], "--seqlen": SMALL["--seqlen"], "--model": model}
        if out[0] == "demo":
            wanted["--limit"] = SMALL["--limit"]
        for k, v in wanted.items():
            if k not in out:
                out += [k, v]
    return out


def test_readme_commands_parse():
    cmds = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    names = [c[0] for c in cmds]
    assert len(cmds) >= 20 and {"list", "data", "prune", "apply", "eval", "analyze", "run", "report", "export",
                                "demo"} <= set(names)
    made = set()  # run names used later are created earlier
    for c in cmds:
        outs = {c[i + 1] for i, a in enumerate(c[:-1]) if a == "--out"}
        if c[0] in ("eval", "analyze", "export", "apply"):
            used = {a for a in c[1:] if a.startswith("runs/")} - outs
            assert used <= made, f"{sorted(used - made)} used before a command makes it: {c}"
        made |= outs
    assert small(["prune", "--method", "wanda", "--nsamples", "16", "--out", "r"], "M") == \
        ["prune", "--method", "wanda", "--nsamples", "4", "--out", "r", "--seqlen", "16", "--model", "M"]
    assert small(["eval", "embedded", "--limit", "50"], "M") == ["eval", "M", "--limit", "3"]


def test_readme_walkthrough_runs_offline(tmp_path, data_dir, tiny_dir, monkeypatch):
    model = os.environ.get("POLYPRUNE_README_MODEL") or str(tiny_dir("llama"))
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_dir)
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", work / "examples")
    grid = work / "examples" / "grid.yaml"
    g = grid.read_text(encoding="utf-8").replace("[embedded]", f"[{model}]")
    grid.write_text(re.sub(r"nsamples: \d+, seqlen: \d+", "nsamples: 4, seqlen: 16",
                           re.sub(r"limit: \d+", "limit: 3", g)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "POLYPRUNE_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", POLYPRUNE_PROGRESS="0")
    cmds = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    code = ("import sys\nfrom polyprune.cli import main\nimport shlex\n"
            "for line in sys.stdin.read().splitlines():\n"
            "    print('$ polyprune ' + line, flush=True)\n"
            "    try:\n        main(shlex.split(line))\n"
            "    except SystemExit as e:\n"
            "        if e.code not in (0, None):\n            print(f'FAILED ({e.code}): {line}', flush=True)\n"
            "            raise\n")
    # one process for the whole walkthrough: the same code path as the entry point, one import of torch
    script = "\n".join(shlex.join(small(c, model)) for c in cmds)
    r = forked.run(["-c", code], input=script, cwd=work, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    runs = work / "runs"
    for name in ("w50", "sg-fr-en", "w-en", "w-sw", "w-de-en", "prog", "owl"):
        assert (runs / name / "masks.safetensors").is_file(), name
    assert (runs / "w-en" / "stats.safetensors").is_file()
    for task in ("perplexity", "xnli", "translation", "rankc", "lm-eval_polyprune_capitals"):
        assert (runs / "w50" / "results" / f"{task}.json").is_file(), task
    assert list((runs / "analysis").glob("*.png")) or list((runs / "analysis").rglob("*.png"))
    assert (runs / "example-grid" / "report" / "report.md").is_file()
    assert (work / "pruned-model" / "config.json").is_file() and (work / "w50-hf" / "config.json").is_file()
    assert (work / "demo-runs" / "report" / "report.md").is_file()
    assert "CPU-s" in r.stdout  # the demo reports its own cost
