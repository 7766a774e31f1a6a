"""One registry type for every pluggable kind: lookup, typo suggestions, listings."""
import pytest

from polyprune.errors import UserError
from polyprune.registry import Registry, first_line


def test_resolve_suggests_the_closest_name_and_lists_all():
    reg = Registry("method")
    reg.register("wanda", object())
    reg.register("sparsegpt", object())
    with pytest.raises(UserError) as e:
        reg.resolve("wandda")
    assert str(e.value) == "unknown method 'wandda': did you mean 'wanda'? choose one of sparsegpt, wanda"
    with pytest.raises(UserError) as e:
        reg.resolve("zzz")
    assert str(e.value) == "unknown method 'zzz': choose one of sparsegpt, wanda"


def test_loader_runs_once_on_first_read_and_also_names_are_listed():
    calls = []
    reg = Registry("allocation", lambda: calls.append(1) or reg.register("owl", "OWL"), also=("uniform",))
    assert calls == []
    assert "owl" in reg and reg["owl"] == "OWL" and list(reg) == ["owl"]
    assert calls == [1]
    with pytest.raises(UserError, match=r"choose one of owl, uniform$"):
        reg.resolve("x")
    assert calls == [1]


def test_a_second_entry_under_one_name_is_refused():
    reg = Registry("task")
    a = object()
    reg.register("t", a)
    reg.register("t", a)  # re-import of the same module: same entry
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("t", object())


def test_first_line_keeps_abbreviations_and_joins_wrapped_lines():
    assert first_line("Kim et al. Eq. 4: ``|W|``·‖X‖ over the\n    target set. More text.\n\nDetails.") == \
        "Kim et al. Eq. 4: |W|·‖X‖ over the target set."
    assert first_line(None) == ""


def test_every_builtin_registry_describes_each_entry():
    from polyprune.allocation import ALLOCATIONS
    from polyprune.analysis import ANALYSES
    from polyprune.calibration import RECIPES
    from polyprune.evaluate import TASKS
    from polyprune.methods import METHODS, REFINERS
    from polyprune.methods.lang_wanda import LANG_SCORES
    regs = {"method": METHODS, "refinement": REFINERS, "allocation": ALLOCATIONS, "calibration recipe": RECIPES,
            "task": TASKS, "analysis": ANALYSES, "language-aware score": LANG_SCORES}
    assert {r.kind for r in regs.values()} == set(regs)
    assert {"wanda", "sparsegpt", "gptq", "ria", "lang-wanda"} <= set(METHODS.names())
    assert {"owl", "lang-corr"} <= set(ALLOCATIONS.names())
    assert {"translation", "monolingual", "text", "mix", "code", "mbs"} <= set(RECIPES.names())
    for reg in regs.values():
        rows = reg.describe()
        assert [n for n, _ in rows] == sorted(reg)
        assert all(h and "\n" not in h for _, h in rows), reg.kind
