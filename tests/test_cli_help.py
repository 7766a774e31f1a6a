"""The CLI tells what exists: `polyprune list` from the registries, full choice lists and examples in
every command's help, no type placeholders, and `--help` without the heavy imports."""
import logging
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from polyprune.cli import app
import polyprune.commands  # noqa: F401  (registers the sub-commands)
from polyprune.commands.listing import REGISTRIES, entries
from polyprune.registry import declared, first_line as first_sentence

runner = CliRunner()


def _registry_names():
    from polyprune import calibrations  # noqa: F401
    from polyprune.allocation import ALLOCATIONS
    from polyprune.analysis import ANALYSES
    from polyprune.calibration import RECIPES
    from polyprune.evaluate import TASKS
    from polyprune.formats import FORMATS
    from polyprune.languages import LANGUAGES
    from polyprune.methods import METHODS, REFINERS, _load_builtin
    _load_builtin()
    return {"methods": set(METHODS), "recipes": set(RECIPES), "analyses": set(ANALYSES),
            "allocations": {"uniform", *ALLOCATIONS}, "refinements": set(REFINERS), "formats": set(FORMATS),
            "languages": set(LANGUAGES), "tasks": {("lm-eval:<name>" if t == "lm-eval" else t) for t in TASKS}}


@pytest.mark.parametrize("kind", ["methods", "recipes", "tasks", "analyses", "allocations", "refinements",
                                  "languages", "formats"])
def test_list_matches_the_registries(kind):
    expected = _registry_names()[kind]
    rows = entries(kind)
    assert {n for n, _ in rows} == expected and len(rows) == len(expected)
    assert all(text and "\n" not in text for _, text in rows)  # one line of help each
    r = runner.invoke(app, ["list", kind])
    assert r.exit_code == 0
    lines = r.output.strip().splitlines()
    assert len(lines) == len(expected) and {x.split()[0] for x in lines} == expected


def test_list_unknown_kind_is_a_usage_error():
    r = runner.invoke(app, ["list", "nope"])
    assert r.exit_code == 2


def test_first_sentence():
    assert first_sentence("Kim et al. Eq. 4: a ``x``.\nMore. Other.\n\nNext") == "Kim et al. Eq. 4: a x."
    assert first_sentence("No full stop") == "No full stop"


def _commands():
    def walk(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer ships its own click)
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield path, cmd
    return list(walk(typer.main.get_command(app), []))


def test_every_option_has_a_description_and_every_command_examples():
    cmds = _commands()
    assert {" ".join(p) for p, _ in cmds} >= {"prune", "apply", "eval", "analyze", "demo", "report", "run", "list",
                                                 "data languages"}
    for path, cmd in cmds:
        for p in cmd.params:
            if p.param_type_name == "option" and not p.hidden:
                assert p.help and p.help.strip(), (path, p.name)
                if p.name != "device":  # device names are open-ended (cuda:N …), not a choice list
                    assert "…" not in p.help, (path, p.name)
        if path != ["export"]:
            assert (cmd.epilog or "").count("$ polyprune") >= 2, path


@pytest.mark.parametrize("cmd,option,kind", [("prune", "method", "methods"), ("prune", "calibration", "recipes"),
                                             ("prune", "allocation", "allocations"), ("prune", "refine", "refinements"),
                                             ("eval", "task", "tasks"), ("analyze", "what", "analyses")])
def test_help_shows_full_choice_lists(cmd, option, kind):
    command = dict((" ".join(p), c) for p, c in _commands())[cmd]
    help_text = next(p.help for p in command.params if p.name == option)
    names = _registry_names()[kind] - {"uniform"} if kind == "allocations" else _registry_names()[kind]
    missing = [n for n in names if n.replace("<name>", "<") not in help_text]
    assert not missing, (cmd, option, missing)


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_help_choice_lists_read_from_source_equal_the_loaded_registries(kind):
    """``--help`` names come from the registering source (no torch import): they must be exactly the
    names the loaded registry has, or a registration registry.declared cannot read went unnoticed."""
    _, _, source, fn = REGISTRIES[kind]
    assert declared(source, fn) == sorted(_registry_names()[kind] - {"uniform", "lm-eval:<name>"} |
                                          ({"lm-eval"} if kind == "tasks" else set()))


def test_declared_reads_names_and_entries_from_source(tmp_path, monkeypatch):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "__init__.py").write_text("")
    (tmp_path / "plug" / "a.py").write_text("@reg('x', needs=1)\ndef f(): pass\nreg(Entry('y', 2))\n"
                                            "other.reg('not-me')\nreg(name)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert declared("plug", "reg") == ["x", "y"] and declared("plug.a", "reg") == ["x", "y"]
    assert declared("no_such_module_xyz", "reg") == []


def test_help_has_no_type_placeholders():
    for path, _ in _commands():
        r = runner.invoke(app, [*path, "--help"], terminal_width=120)
        assert r.exit_code == 0, path
        for placeholder in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list[str]>"):
            assert placeholder not in r.output, (path, placeholder)


def test_help_does_not_import_the_heavy_libraries():
    code = ("import sys\nfrom polyprune.cli import main\n"
            "for argv in (['--help'], ['prune', '--help'], ['eval', '--help'], ['analyze', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'matplotlib', 'lm_eval') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_lm_eval_task_alias_is_deprecated(caplog):
    from polyprune.commands.eval import deprecated_lm_eval_task
    from polyprune.errors import UserError
    with caplog.at_level(logging.WARNING):
        assert deprecated_lm_eval_task("lm-eval", "arc_easy") == "lm-eval:arc_easy"
    assert "deprecated: write --task lm-eval:arc_easy" in caplog.text
    with pytest.raises(UserError, match="--task lm-eval:arc_easy"):
        deprecated_lm_eval_task("xnli", "arc_easy")
