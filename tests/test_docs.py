"""Docs that are generated from code stay in sync with it."""

from __future__ import annotations

from pathlib import Path

from ldmctl.config import reference_markdown

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
