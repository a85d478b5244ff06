"""The plugin surface is tested and documented (datasette-style meta-tests): every hook has a
``test_hook_<name>``, and every hook and every overridable Conditioner method appears, with its
arguments, in docs/plugins.md."""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import pytest
from ldmctl_conditioners import ClassAdd

from ldmctl import hookimpl
from ldmctl.conditioning import Conditioner, hookspecs
from ldmctl.conditioning.registry import conditioners, make_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("ldmctl_")]
SAMPLE_TIME = ["parse_input", "collate_inputs", "default_inputs", "describe_input"]


def _arguments(f) -> list[str]:
    return [p for p in inspect.signature(f).parameters if p != "self"]


def test_hook_ldmctl_register_conditioners():
    """A plugin object's hook registers its classes, under their names and aliases."""

    class Renamed(ClassAdd):
        name, aliases = "class-test", ("class-test-old",)

    plugin = types.ModuleType("ldmctl_hook_test")

    @hookimpl
    def ldmctl_register_conditioners(register):
        register(Renamed)

    plugin.ldmctl_register_conditioners = ldmctl_register_conditioners
    found = conditioners(make_plugin_manager((plugin,), entry_points=False))
    assert set(found) == {"class-test", "class-test-old"} and found["class-test-old"].cls is Renamed
    assert found["class-test"].package == "ldmctl_hook_test"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert f"def test_hook_{hook}(" in tests


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_arguments(hook):
    assert f"`{hook}(" in DOCS, f"docs/plugins.md does not document the hook {hook}"
    for arg in _arguments(getattr(hookspecs, hook)):
        assert f"`{arg}`" in DOCS, f"docs/plugins.md does not name argument {arg!r} of {hook}"


@pytest.mark.parametrize("method", SAMPLE_TIME)
def test_the_sample_time_contract_is_documented_with_its_arguments(method):
    params = list(inspect.signature(getattr(Conditioner, method)).parameters.values())[1:]  # after self
    written = "".join(f", {p.name}: {p.annotation}" for p in params)  # annotations are strings (PEP 563)
    assert f"`{method}(self{written})" in DOCS, f"docs/plugins.md does not document {method}(self{written})"
