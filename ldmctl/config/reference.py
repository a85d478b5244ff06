"""The configuration reference: every field, its value in each preset and its comment.

``docs/config.md`` embeds :func:`reference_markdown` and ``tests/test_docs.py`` keeps the two equal.
A field's meaning is the comment after it in its class's source (for an inherited field, the
nearest class that declares it).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import fields, is_dataclass
from typing import Any

from ldmctl.config.models import AutoencoderConfig, DiffusionConfig, LDMConfig, UNetConfig
from ldmctl.config.presets import LDM_PRESETS, PRESETS
from ldmctl.config.training import (
    AELossConfig,
    AETrainConfig,
    ContrastConfig,
    DataConfig,
    DegradationConfig,
    EMAConfig,
    InpaintConfig,
    LDMTrainConfig,
    LDMTrainingConfig,
)


def reference_markdown() -> str:
    """The configuration reference of both trainers, as Markdown tables (one per section)."""
    lines = ["## train-ae", ""]
    lines += _reference_tables(
        PRESETS, [("model", AutoencoderConfig), ("loss", AELossConfig), ("data", DataConfig), ("train", AETrainConfig)]
    )
    lines += ["## train-ldm", ""]
    lines += _reference_tables(
        LDM_PRESETS,
        [
            ("model.unet", UNetConfig),
            ("model.diffusion", DiffusionConfig),
            ("model", LDMConfig),
            ("data", DataConfig),
            ("train", LDMTrainConfig),
            ("ema", EMAConfig),
            ("superres", DegradationConfig),
            ("inpaint", InpaintConfig),
            ("contrast", ContrastConfig),
            ("", LDMTrainingConfig),
        ],
    )
    return "\n".join(lines)


def _comment(cls: type, name: str) -> str | None:
    """The comment after field ``name`` in the source of ``cls`` or the nearest base declaring it."""
    for klass in cls.__mro__:
        if not is_dataclass(klass) or name not in inspect.get_annotations(klass):
            continue
        m = re.search(rf"^ +{name}: .*?#\s*(.*)$", inspect.getsource(klass), re.MULTILINE)
        return m.group(1) if m else None
    return None


def _reference_tables(presets: dict[str, Any], sections: list[tuple[str, type]]) -> list[str]:
    lines: list[str] = []
    names = list(presets)
    for sec, cls in sections:
        title = f"`{sec}` ({cls.__name__})" if sec else f"top level ({cls.__name__})"
        lines += [
            f"### {title}",
            "",
            "| field | " + " | ".join(names) + " | meaning |",
            "|---" * (len(names) + 2) + "|",
        ]
        for f in fields(cls):
            meaning = _comment(cls, f.name)
            if meaning is None:  # a nested section, listed in its own table
                continue
            vals = []
            for p in names:
                obj = presets[p]
                for part in filter(None, sec.split(".")):
                    obj = getattr(obj, part)
                vals.append(getattr(obj, f.name))
            shown = [str(list(v) if isinstance(v, tuple) else v) for v in vals]
            key = f"{sec}.{f.name}" if sec else f.name
            lines.append(f"| `{key}` | " + " | ".join(shown) + f" | {meaning} |")
        lines.append("")
    return lines


__all__ = ["reference_markdown"]
