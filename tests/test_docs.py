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
