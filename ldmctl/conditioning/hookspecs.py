"""The hooks a plugin may implement (pluggy project name ``ldmctl``).

A plugin is any module registered under the ``ldmctl`` entry-point group; the built-in
mechanisms (``plugins/ldmctl_conditioners``) are registered exactly that way::

    # pyproject.toml of a third-party package
    [project.entry-points.ldmctl]
    depth = "ldmctl_depth"

    # ldmctl_depth/__init__.py
    from ldmctl import hookimpl

    @hookimpl
    def ldmctl_register_conditioners(register):
        register(DepthConcat)
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("ldmctl")


@hookspec
def ldmctl_register_conditioners(register: Callable[[type], None]) -> None:
    """Call ``register(cls)`` once for each :class:`~ldmctl.conditioning.Conditioner` subclass.

    Each class is checked as it is registered: a duplicate ``name``, an unknown ``kind``, a
    missing ``Config`` dataclass or ``input_key`` raises PluginError naming the class. A class
    that reads anything but text also says how its input is given at sample time (``ldmctl
    sample --input KEY=VALUE``): ``parse_input``, ``collate_inputs``, ``default_inputs`` and
    ``describe_input`` (see :class:`~ldmctl.conditioning.Conditioner` and docs/plugins.md).
    """
