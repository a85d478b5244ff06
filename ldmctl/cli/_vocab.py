"""The one vocabulary of the command line: choices, output and tile spellings, old spellings.

Every command names things the same way:

- outputs by what they are: ``--out-dir DIR`` for a folder, ``--out-file FILE`` (``-o``) for one
  file, ``--json FILE`` for a machine-readable report of the figures a command prints;
- tile sizes in **pixels** (``--tile-px`` / ``--overlap-px``), of the image a command writes;
- ``--metrics`` chooses metrics, comma-separated or repeated (``--metrics fid,kid`` equals
  ``--metrics fid --metrics kid``), ``auto`` by default;
- fixed lists of values (samplers, precisions, presets...) are ``Literal`` types, so ``--help``
  shows them and a bad value is a usage error (exit 2) that lists them; ``--device`` (which
  also takes ``cuda:N``) is checked by :func:`ldmctl.device.parse_device` the same way.

Old spellings keep working. Where an old name meant the same thing it is a second name of the
new option, which :class:`Command` leaves out of ``--help`` and docs/cli.md (:data:`OLD_SPELLINGS`);
where it meant something else (``superres --tile`` in latent cells) the command keeps a hidden
option with the old meaning and says the new spelling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from typer.core import TyperCommand

from ldmctl.config.limits import check_seed
from ldmctl.errors import ConfigError

# values of the options that take one of a fixed list (tests/cli/test_vocabulary.py pins each to
# the library's own list, so they cannot drift)
Sampler = Literal["ddim", "plms", "ddpm", "dpmpp"]
Weights = Literal["ema", "raw"]
Preset = Literal["tiny", "small", "base"]
Precision = Literal["fp32", "bf16", "fp16"]
AEPrecision = Literal["fp32", "bf16"]  # train-ae has no gradient scaler, so no fp16
Prediction = Literal["eps", "v", "x0"]
Schedule = Literal["linear", "sqrt_linear", "cosine"]
Task = Literal["generate", "superres", "inpaint"]
AEKind = Literal["kl", "vq"]
Perceptual = Literal["lpips", "none"]

# old spelling -> the spelling that replaced it (everywhere the old one was used)
OLD_SPELLINGS = {
    "--out": "--out-dir (a folder) or --out-file / -o (a file)",
    "--metric": "--metrics",
    "--tile": "--tile-px (pixels)",
    "--overlap": "--overlap-px (pixels)",
}


def shown_opts(opts: list[str]) -> list[str]:
    """``opts`` without the old spellings (all of them if nothing else would be left)."""
    kept = [o for o in opts if o not in OLD_SPELLINGS]
    return kept or list(opts)


@contextmanager
def _without_old_spellings(params: list[Any]) -> Iterator[None]:
    saved = [(p, p.opts) for p in params if getattr(p, "opts", None)]
    try:
        for p, opts in saved:
            p.opts = shown_opts(opts)
        yield
    finally:
        for p, opts in saved:
            p.opts = opts


class Command(TyperCommand):
    """A Typer command whose ``--help`` shows only the current spellings of its options.

    The old spellings stay second names of the same options, so they parse as before; only the
    help text (rendered after parsing, then restored) and shell completion leave them out."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _without_old_spellings(self.params):
            super().format_help(ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        """Shell completion offers the current spellings only, as ``--help`` does."""
        return [item for item in super().shell_complete(ctx, incomplete) if item.value not in OLD_SPELLINGS]

    def invoke(self, ctx: Any) -> Any:
        """Check every seed option (``--seed``, ``--repeat-seed``, ...) against the generators' range
        before the command runs: one rule for every command, as the config validator has for files."""
        for name, value in ctx.params.items():
            if name.endswith("seed") and isinstance(value, int) and not isinstance(value, bool):
                check_seed(value, f"--{name.replace('_', '-')}")
        return super().invoke(ctx)


def metrics_spec(values: list[str] | None) -> str:
    """One comma-separated ``--metrics`` spec from a repeated, comma-separated option (``auto``
    when not given)."""
    names = [m.strip() for v in values or [] for m in v.split(",") if m.strip()]
    return ",".join(dict.fromkeys(names)) or "auto"


def pick_metrics(values: list[str] | None, known: tuple[str, ...]) -> tuple[str, ...] | None:
    """The metrics named by ``--metrics`` (None for ``auto``); a ConfigError names unknown ones."""
    spec = metrics_spec(values)
    if spec == "auto":
        return None
    names = tuple(spec.split(","))
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ConfigError(f"--metrics {spec!r}: unknown {unknown}; use auto or a comma-separated list of {list(known)}")
    return names


def pixels_to_cells(tile_px: int, overlap_px: int, cell: int, multiple: int = 1) -> tuple[int, int]:
    """Tile side and overlap in pixels -> in cells of ``cell`` pixels (a latent cell is f pixels).

    The tile must be a positive multiple of ``cell * multiple`` pixels (``multiple``: e.g. the
    UNet's downsampling, in cells) and the overlap a multiple of ``cell`` below the tile."""
    step = cell * multiple
    if tile_px < step or tile_px % step:
        raise ConfigError(
            f"--tile-px {tile_px} must be a positive multiple of {step} pixels ({multiple} latent cell(s) of {cell} px)"
        )
    if overlap_px < 0 or overlap_px % cell or overlap_px >= tile_px:
        raise ConfigError(
            f"--overlap-px {overlap_px} must be a multiple of {cell} pixels (one latent cell), "
            f">= 0 and smaller than --tile-px {tile_px}"
        )
    return tile_px // cell, overlap_px // cell


__all__ = ["OLD_SPELLINGS", "Command", "metrics_spec", "pick_metrics", "pixels_to_cells", "shown_opts"]
