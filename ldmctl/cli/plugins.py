"""``ldmctl plugins``: every installed conditioner, with its package, version and kind."""

from __future__ import annotations

from rich.table import Table

from ldmctl.cli._console import console


def command() -> None:
    """List the conditioning plugins (built-in and third-party) ldmctl can use."""
    from ldmctl.conditioning.registry import conditioners

    table = Table(title="conditioners")
    for col in ("name", "kind", "reads", "package", "version", "class"):
        table.add_column(col)
    for name, reg in sorted(conditioners().items()):
        table.add_row(
            name,
            reg.cls.kind,
            reg.cls.input_key,
            reg.package,
            reg.version,
            f"{reg.cls.__module__}.{reg.cls.__qualname__}",
        )
    console.print(table)
