"""Docs that are generated from code stay in sync with it; documented recipes stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldmctl.config import load_file, merge, preset, reference_markdown, validate_ae

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_config_reference_is_current():
    text = (DOCS / "config.md").read_text()
    start = text.index("-->\n", text.index("<!-- generated")) + 4
    end = text.index("<!-- end generated -->")
    assert text[start:end].strip() == reference_markdown().strip(), (
        "docs/config.md is stale: regenerate the table with ldmctl.config.reference_markdown()")


def _generated(name: str) -> str:
    text = (DOCS / name).read_text()
    start = text.index("-->\n", text.index("<!-- generated")) + 4
    return text[start:text.index("<!-- end generated -->")].strip()


def test_cli_reference_is_current():
    from ldmctl.cli import app
    from ldmctl.cli._reference import cli_reference_markdown

    assert _generated("cli.md") == cli_reference_markdown(app).strip(), (
        "docs/cli.md is stale: regenerate it with ldmctl.cli._reference.cli_reference_markdown(app)")


def test_readme_test_command_is_what_ci_runs():
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    assert "python -m pytest" in readme and "\npython -m pytest\n" in ci


@pytest.mark.parametrize("recipe", sorted((DOCS / "recipes").glob("ae-*.toml")), ids=lambda p: p.name)
def test_autoencoder_recipes_are_valid_configs(recipe):
    """Every documented train-ae recipe loads onto the small preset and passes validation."""
    cfg = validate_ae(merge(preset("small"), load_file(recipe)))
    assert cfg.data.size % cfg.model.downsample_factor == 0


def test_f4_recipe_stages_share_one_model():
    """The second stage starts from the first one's weights (--init): same [model] section."""
    recipes = DOCS / "recipes"
    first, finish = (load_file(recipes / n) for n in ("ae-kl-f4-photos.toml", "ae-kl-f4-photos-finish.toml"))
    assert first["model"] == finish["model"]
    assert finish["data"]["size"] > first["data"]["size"]
