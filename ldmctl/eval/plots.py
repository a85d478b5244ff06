"""PNG figures of ``ldmctl compare``: line plots (matplotlib, Agg backend) and sample grids (PIL).

matplotlib is optional (``pip install "ldmctl[report]"``); :func:`require_matplotlib` says so
before any long step. Figures are small on purpose (about 100 dpi, a few tens of KB) so that
reports can live in the repository.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from ldmctl.errors import PackageError
from ldmctl.files import atomic_write


@dataclass(frozen=True)
class Point:
    """One point of a line: x, y and the half-height of its error bar (NaN: none)."""

    x: float
    y: float
    err: float = math.nan
    note: str = ""  # drawn beside the point, e.g. the step count on a time axis


@dataclass(frozen=True)
class Panel:
    """One subplot: named lines of points, optionally a horizontal band (low, high, label)."""

    title: str
    xlabel: str
    ylabel: str
    lines: dict[str, list[Point]]
    logx: bool = False
    xticks: tuple[float, ...] = ()
    band: tuple[float, float, str] | None = None


def require_matplotlib() -> Any:
    """Return matplotlib's pyplot on the Agg backend, or raise PackageError naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise PackageError(
            "the compare report's plots need matplotlib, which is not installed",
            hint='pip install "ldmctl[report]" (or pip install matplotlib)',
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_panels(panels: list[Panel], path: Path, *, title: str = "") -> Path:
    """Draw ``panels`` side by side into one PNG at ``path``."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        _draw(ax, panel)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


def _draw(ax: Any, panel: Panel) -> None:
    if panel.band is not None:
        low, high, label = panel.band
        ax.axhspan(low, high, color="0.85", zorder=0, label=label)
    for name, points in panel.lines.items():
        xs, ys = [p.x for p in points], [p.y for p in points]
        errs = [0.0 if math.isnan(p.err) else p.err for p in points]
        ax.errorbar(xs, ys, yerr=errs, marker="o", markersize=4, capsize=3, linewidth=1.4, label=name)
        for p in points:
            if p.note:
                ax.annotate(p.note, (p.x, p.y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if panel.logx:
        ax.set_xscale("log")
    xs = [p.x for points in panel.lines.values() for p in points if p.x > 0]
    ticks = list(panel.xticks) or (_nice_ticks(min(xs), max(xs)) if panel.logx and xs else [])
    if ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel, fontsize=9)
    ax.set_ylabel(panel.ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def _nice_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks covering [low, high] (a log axis' default labels them 3x10^-2, 4x10^-2, ... and they collide)."""
    ticks = [
        m * 10.0**e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1) for m in (1, 2, 5)
    ]
    inside = [t for t in ticks if low / 1.5 <= t <= high * 1.5]
    return inside or [low, high]


def save_grid(images: Tensor, path: Path, *, columns: int = 10) -> Path:
    """Save images (N, 3, H, W) in [-1, 1] as one PNG grid, ``columns`` per row, white gaps."""
    grid = make_grid((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, nrow=columns, padding=1, pad_value=1.0)
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, 3)
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG", optimize=True))
    return path


def save_rows(rows: dict[str, Tensor], path: Path, *, columns: int = 10) -> Path:
    """One grid, one row per name (the first ``columns`` images of each), in the dict's order."""
    cols = min([columns, *(r.shape[0] for r in rows.values())])
    return save_grid(torch.cat([r[:cols] for r in rows.values()]), path, columns=cols)


__all__ = ["Panel", "Point", "plot_panels", "require_matplotlib", "save_grid", "save_rows"]
