"""Everything the CLI draws: consoles, progress bars, image grids. Only cli/ uses rich."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch import Tensor

console = Console(markup=False, soft_wrap=True)  # stdout: results (paths, tables, JSON), printed verbatim
err_console = Console(stderr=True, soft_wrap=True)  # stderr: progress, logs, errors


@contextmanager
def step_progress(total: int, start: int = 0, description: str = "train") -> Iterator[tuple[Progress, int]]:
    """A rich progress bar on stderr showing step, a free-text stats field, steps/s and ETA."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=start, stats="")
        yield progress, task


def train_with_progress(
    train: Callable[..., dict[str, Any]],
    *,
    total: int,
    description: str,
    shown: tuple[str, ...],
    out: Path,
    max_cols: int = 8,
) -> dict[str, Any] | None:
    """Run ``train(callbacks=...)`` under a progress bar showing the logs ``shown``, saving its
    sample grids to OUT/samples/; return its summary. Under torchrun only rank 0 reports: the
    other ranks call ``train()`` without callbacks and return None."""
    from ldmctl.train.loop import Callbacks

    if int(os.environ.get("RANK", "0")) > 0:
        train()
        return None
    with step_progress(total, description=description) as (progress, task):
        callbacks = Callbacks(
            on_step=lambda step, logs: progress.update(task, completed=step, stats=format_logs(logs, shown)),
            on_images=lambda step, name, rows: save_grid(rows, out / "samples" / f"{name}.png", max_cols=max_cols),
            on_message=lambda text: progress.console.print(text),
        )
        summary = train(callbacks=callbacks)
    if summary["skipped_files"]:
        err_console.print(
            f"[yellow]skipped {len(summary['skipped_files'])} unusable file(s)[/] "
            f"(see {escape(str(out / 'summary.json'))})"
        )
    return summary


def tile_progress(progress: Progress, task: int, image: int) -> Callable[[int, int], None]:
    """A ``(done, total)`` tile callback for the ``image``-th image (from 0) of a bar counting
    images: the bar advances by the fraction of that image's tiles done."""

    def report(done: int, total: int) -> None:
        progress.update(task, completed=image + done / total)

    return report


def format_logs(logs: dict[str, float], keys: tuple[str, ...]) -> str:
    """``rec 0.123 kl 4.5 ...`` for the keys present in ``logs``."""
    parts = [f"{k} {logs[k]:.4g}" for k in keys if k in logs]
    return "  ".join(parts)


def to_uint8_image(x: Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> an RGB PIL image."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(rearrange(x, "c h w -> h w c").cpu().numpy())


def save_grid(rows: dict[str, Tensor], path: Path, *, max_cols: int = 8) -> Path:
    """Save named image batches (each (B, 3, H, W) in [-1, 1]) as one PNG, one row per name."""
    batches = [r[:max_cols].detach().float().cpu() for r in rows.values()]
    cols = min(b.shape[0] for b in batches)
    grid = torch.stack([b[:cols] for b in batches])  # (R, C, 3, H, W)
    grid = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=1.0)
    img = rearrange(grid, "r c ch h w -> ch (r h) (c w)")
    path.parent.mkdir(parents=True, exist_ok=True)
    to_uint8_image(img).save(path)
    return path


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid of ``n`` images."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def metrics_table(title: str, rows: list[dict[str, object]], columns: list[str]) -> Table:
    """A rich table of per-item metric rows (floats shown with 4 significant digits)."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c in ("image", "name", "metric", "class", "meaning") else "right")
    for row in rows:
        table.add_row(*[f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns])
    return table
