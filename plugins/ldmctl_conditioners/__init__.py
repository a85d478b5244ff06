"""ldmctl's built-in conditioning mechanisms, registered through the ``ldmctl`` entry-point group
exactly as a third-party plugin registers its own (see ``pyproject.toml``)."""

from __future__ import annotations

from collections.abc import Callable

from ldmctl import hookimpl
from ldmctl_conditioners.classes import ClassAdd, ClassToken
from ldmctl_conditioners.clip import ClipText
from ldmctl_conditioners.concat import ImageConcat, LatentConcat
from ldmctl_conditioners.inpaint import MaskConcat, MaskedLatentConcat
from ldmctl_conditioners.text import TextCrossAttn, TextPooled, TextTokens


@hookimpl
def ldmctl_register_conditioners(register: Callable[[type], None]) -> None:
    for cls in (
        ImageConcat,
        LatentConcat,
        MaskConcat,
        MaskedLatentConcat,
        ClassAdd,
        ClassToken,
        ClipText,
        TextCrossAttn,
        TextPooled,
        TextTokens,
    ):
        register(cls)


__all__ = [
    "ClassAdd",
    "ClassToken",
    "ClipText",
    "ImageConcat",
    "LatentConcat",
    "MaskConcat",
    "MaskedLatentConcat",
    "TextCrossAttn",
    "TextPooled",
    "TextTokens",
]
