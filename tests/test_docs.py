"""Docs that are generated from code stay in sync with it; documented recipes stay valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ldmctl.config import load_file, merge, preset, reference_markdown
from ldmctl.train.configure import resolve_ae

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_config_reference_is_current():
    text = (DOCS / "config.md").read_text()
    start = text.index("-->\n", text.index("<!-- generated")) + 4
    end = text.index("<!-- end generated -->")
    assert text[start:end].strip() == reference_markdown().strip(), (
        "docs/config.md is stale: regenerate the table with ldmctl.config.reference_markdown()"
    )


def _generated(name: str) -> str:
    text = (DOCS / name).read_text()
    start = text.index("-->\n", text.index("<!-- generated")) + 4
    return text[start : text.index("<!-- end generated -->")].strip()


def test_cli_reference_is_current():
    from ldmctl.cli import app
    from ldmctl.cli._reference import cli_reference_markdown

    assert _generated("cli.md") == cli_reference_markdown(app).strip(), (
        "docs/cli.md is stale: regenerate it with ldmctl.cli._reference.cli_reference_markdown(app)"
    )


def test_readme_test_command_is_what_ci_runs():
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert "python -m pytest" in readme and "\npython -m pytest\n" in ci


@pytest.mark.parametrize("recipe", sorted((DOCS / "recipes").glob("ae-*.toml")), ids=lambda p: p.name)
def test_autoencoder_recipes_are_valid_configs(recipe):
    """Every documented train-ae recipe loads onto the small preset and passes validation."""
    cfg = resolve_ae(merge(preset("small"), load_file(recipe)))
    assert cfg.data.size % cfg.model.downsample_factor == 0


def test_f4_recipe_stages_share_one_model():
    """The second stage starts from the first one's weights (--init): same [model] section."""
    recipes = DOCS / "recipes"
    first, finish = (load_file(recipes / n) for n in ("ae-kl-f4-photos.toml", "ae-kl-f4-photos-finish.toml"))
    assert first["model"] == finish["model"]
    assert finish["data"]["size"] > first["data"]["size"]


def _documented_commands() -> list[tuple[str, list[str]]]:
    """(file, tokens) of every ``ldmctl COMMAND ...`` line in README.md, docs/*.md and the recipes."""
    root = DOCS.parent
    found = []
    for path in [root / "README.md", *sorted(DOCS.glob("*.md")), *sorted((DOCS / "recipes").glob("*.toml"))]:
        if path.name == "cli.md":
            continue  # generated from the commands themselves (test_cli_reference_is_current)
        text = re.sub(r"\\\n[#\s]*", " ", path.read_text())  # continuation lines, also inside toml comments
        for m in re.finditer(r"(?<![\w/.-])ldmctl ([^`\n#|)]+)", text):
            found.append((path.name, m.group(1).split()))
    return found


def test_documented_command_lines_use_current_spellings():
    """Every option in a documented command line is one its command takes today, spelt as --help
    shows it (old spellings still parse, but the docs teach the new ones)."""
    import typer

    from ldmctl.cli import app
    from ldmctl.cli._vocab import OLD_SPELLINGS

    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="ldmctl")
    checked, wrong = 0, []
    for where, tokens in _documented_commands():
        while tokens and tokens[0].startswith("-"):  # root options: -v, --version
            tokens = tokens[1:]
        cmd = group.get_command(ctx, tokens[0]) if tokens else None
        if cmd is None:
            continue  # prose ("ldmctl is ...") or a path
        name, args = tokens[0], tokens[1:]
        if hasattr(cmd, "list_commands"):
            sub = cmd.get_command(ctx, args[0]) if args else None
            if sub is None:
                continue
            name, cmd, args = f"{name} {args[0]}", sub, args[1:]
        spellings = {o for p in cmd.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]} - set(OLD_SPELLINGS)
        for token in args:
            opt = token.strip("[](),`'\"").split("=")[0]
            if re.fullmatch(r"--?[a-zA-Z][\w-]*", opt):
                checked += 1
                if opt not in spellings | {"--help"}:
                    wrong.append(f"{where}: ldmctl {name} ... {opt}")
    assert checked > 100 and wrong == []
