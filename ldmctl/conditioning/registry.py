"""Discovering conditioner plugins: a pluggy manager built on demand, never at import time.

:func:`plugin_manager` adds the hookspecs, loads every module of the ``ldmctl`` entry-point group
(the built-ins included; ``LDMCTL_DISABLE_PLUGINS=1`` loads only the built-in one) and checks
that every hook a plugin implements exists (``check_pending``), so a misspelt hook is an error,
not a silently ignored function. :func:`conditioners` maps each registered name to its class and
the distribution (package and version) that provides it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass

import pluggy

from ldmctl.conditioning import hookspecs
from ldmctl.conditioning.base import KINDS, Conditioner
from ldmctl.errors import PluginError

GROUP = "ldmctl"
BUILTIN_ENTRY_POINT = "builtin"


@dataclass(frozen=True)
class Registered:
    """One registered conditioner class and where it comes from."""

    cls: type[Conditioner]
    package: str
    version: str


@functools.cache
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first use)."""
    return make_plugin_manager()


def make_plugin_manager(extra: tuple[object, ...] = (), *, entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the entry-point plugins and ``extra`` plugin objects."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    only = BUILTIN_ENTRY_POINT if os.environ.get("LDMCTL_DISABLE_PLUGINS") == "1" else None
    try:
        if entry_points:
            pm.load_setuptools_entrypoints(GROUP, name=only)
        for plugin in extra:
            pm.register(plugin)
    except Exception as err:  # noqa: BLE001 - a broken third-party plugin must not hide which one
        raise PluginError(
            f"loading an '{GROUP}' entry-point plugin failed: {type(err).__name__}: {err}",
            hint="set LDMCTL_DISABLE_PLUGINS=1 to run with the built-in plugins only",
        ) from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginError(
            f"plugin {err.plugin!r} implements a hook ldmctl does not have: {err}",
            hint="hooks are named ldmctl_<verb>_<noun>; see docs/plugins.md",
        ) from None
    return pm


def check_conditioner_class(cls: object) -> type[Conditioner]:
    """Raise PluginError unless ``cls`` is a well-formed Conditioner subclass."""
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)!s}"
    if not (isinstance(cls, type) and issubclass(cls, Conditioner)):
        raise PluginError(f"{where} is not a subclass of ldmctl.conditioning.Conditioner")
    for attr in ("name", "kind", "input_key"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise PluginError(f"conditioner {where} has no '{attr}' string")
    if cls.kind not in KINDS:
        raise PluginError(f"conditioner {where} has kind {cls.kind!r}; choose one of {list(KINDS)}")
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        raise PluginError(f"conditioner {where} has no 'Config' dataclass of its options")
    return cls


def conditioners(pm: pluggy.PluginManager | None = None) -> dict[str, Registered]:
    """Every registered conditioner by name (and by each of its aliases), with the package and version
    that provides it."""
    pm = pm or plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    found: dict[str, Registered] = {}
    for impl in pm.hook.ldmctl_register_conditioners.get_hookimpls():
        dist = dists.get(id(impl.plugin))
        package = dist.project_name if dist is not None else impl.plugin_name
        version = dist.version if dist is not None else "?"

        def register(cls: type, package: str = package, version: str = version) -> None:
            cls = check_conditioner_class(cls)
            for name in (cls.name, *cls.aliases):
                if name in found and found[name].cls is not cls:
                    raise PluginError(
                        f"conditioner name {name!r} is registered twice "
                        f"({found[name].cls.__module__} and {cls.__module__})"
                    )
                found[name] = Registered(cls, package, version)

        impl.function(register=register)
    return found


def canonical_name(name: str) -> str:
    """The current name of conditioner ``name`` (itself, or the name an alias stands for)."""
    found = conditioners().get(name)
    return found.cls.name if found is not None else name


def get_conditioner(name: str, *, needed_package: str | None = None) -> Registered:
    """The registered conditioner ``name``; PluginError naming the package to install otherwise."""
    known = conditioners()
    if name not in known:
        hint = f"pip install {needed_package}" if needed_package else "ldmctl plugins lists the installed ones"
        current = sorted({r.cls.name for r in known.values()})
        raise PluginError(f"no conditioner named {name!r} is installed; installed: {current}", hint=hint)
    return known[name]


__all__ = [
    "GROUP",
    "Registered",
    "canonical_name",
    "check_conditioner_class",
    "conditioners",
    "get_conditioner",
    "make_plugin_manager",
    "plugin_manager",
]
