"""Generate the CLI reference (docs/cli.md) from the Typer app itself, so it cannot drift."""

from __future__ import annotations

from typing import Any

import typer

from ldmctl.cli._vocab import shown_opts


def cli_reference_markdown(app: typer.Typer) -> str:
    """Markdown with one section per command: its summary and a table of its parameters."""
    group = typer.main.get_command(app)  # a click-style group (Typer vendors click)
    return "\n".join(_group_lines(group, "ldmctl"))


def _group_lines(group: typer.main.TyperGroup, prefix: str) -> list[str]:
    """Sections for every command of ``group``; a sub-group (``ldmctl compare``) lists its own."""
    ctx = group.context_class(group, info_name=prefix)
    lines: list[str] = []
    for cmd_name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, cmd_name)
        assert cmd is not None
        name = f"{prefix.removeprefix('ldmctl').strip()} {cmd_name}".strip()
        if hasattr(cmd, "list_commands"):
            lines += _group_lines(cmd, f"{prefix} {cmd_name}")
            continue
        args = [
            p.name.upper() + ("..." if p.nargs == -1 else "") for p in cmd.params if p.param_type_name == "argument"
        ]
        usage = " ".join(["[OPTIONS]", *args])
        lines += [
            f"## `ldmctl {name}`",
            "",
            (cmd.help or "").strip().split("\n")[0],
            "",
            f"`ldmctl {name} {usage}`",
            "",
            "| parameter | default | meaning |",
            "|---|---|---|",
        ]
        for p in cmd.params:
            if p.name == "help" or getattr(p, "hidden", False):
                continue
            lines.append(_param_row(p))
        lines.append("")
    return lines


def _param_row(p: Any) -> str:
    """One table row: the current spellings (old ones are left out), default, help and choices."""
    is_option = p.param_type_name == "option"
    flag = " / ".join(shown_opts(p.opts) + list(p.secondary_opts)) if is_option else p.name.upper()
    default = "" if p.required or p.default is None else f"`{p.default}`"
    helptext = (getattr(p, "help", None) or "").replace("|", "\\|")
    desc = getattr(p, "type_descriptor", None)
    if desc is not None and desc.is_choice and desc.choices:
        helptext += " One of: " + ", ".join(f"`{c}`" for c in desc.choices) + "."
    return f"| `{flag}` | {default} | {helptext.strip()} |"
