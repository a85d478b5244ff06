"""``ldmctl compare``: one model under several samplers, or several training configs at one budget.

* :func:`compare_samplers` draws the same N samples of one checkpoint with every (sampler,
  steps): the same seed, hence the same initial noise, class labels and prompts, so settings
  differ only in how they integrate. Each setting is measured by a
  :class:`~ldmctl.eval.judge.Judge` and timed.
* :func:`~ldmctl.compare.training.compare_training` (its own module) trains every variant for
  the same number of steps and measures its EMA weights at every checkpoint.
* :func:`matching_steps` is the rule behind "at what step count does DPM-Solver++ match DDIM-50":
  the smallest step count of each sampler whose quality is not worse than the reference
  setting's by more than ``sigmas`` bootstrap standard deviations of the reference.

Drawing is the caller's: ``draw(model, setting)`` yields ``(images, batch)`` pairs for the N
samples. :func:`sample_draw` makes one from ``ldmctl sample``'s pipeline (:mod:`ldmctl.sampling`,
``--input`` values included), so a setting's figures are what ``ldmctl sample`` / ``ldmctl eval``
give with the same options. Both comparisons write DIR/results.json
(after every measurement, so an interrupted run keeps what it measured), PNG plots and grids,
and DIR/report.md (:mod:`ldmctl.compare.report`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from ldmctl.compare.report import write_samplers_report
from ldmctl.errors import ConfigError
from ldmctl.eval.judge import Judge, Measurement, Metric
from ldmctl.eval.plots import save_grid, save_rows
from ldmctl.files import ensure_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    """How one set of samples is drawn: sampler, number of steps, seed."""

    sampler: str
    steps: int
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.sampler}-{self.steps}"


Draw = Callable[[Any, Setting], Iterator[tuple[Tensor, dict[str, Any]]]]  # (model, setting) -> batches
Say = Callable[[str], None]


def parse_setting(text: str) -> Setting:
    """``"ddim-50"`` -> ``Setting("ddim", 50)``."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_+]+)[-:](\d+)\s*", text)
    if not m:
        raise ConfigError(f"--reference {text!r}: write SAMPLER-STEPS, e.g. ddim-50")
    return Setting(m.group(1), int(m.group(2)))


@dataclass(frozen=True)
class SamplersConfig:
    """The grid of ``compare samplers`` and its match rule."""

    samplers: tuple[str, ...] = ("ddim", "plms", "dpmpp")
    steps: tuple[int, ...] = (10, 20, 50)
    seed: int = 0  # one seed for every setting: same noise, labels and prompts
    reference: str = "ddim-50"  # the setting the others are matched against (added if not in the grid)
    match_sigmas: float = 2.0  # "matches": not worse than the reference by more than this many of its std
    repeat_seed: int | None = None  # also draw the reference with this seed: a check of the noise estimate

    def settings(self) -> list[Setting]:
        grid = [Setting(s, k, self.seed) for s in self.samplers for k in sorted(set(self.steps))]
        ref = replace(parse_setting(self.reference), seed=self.seed)
        return grid if ref in grid else [*grid, ref]


def validate_samplers(cfg: SamplersConfig) -> SamplersConfig:
    """Return ``cfg``, or raise ConfigError naming the bad value (before anything is drawn)."""
    from ldmctl.samplers import get_sampler

    if not cfg.samplers or not cfg.steps:
        raise ConfigError("--samplers and --steps each need at least one value")
    for name in (*cfg.samplers, parse_setting(cfg.reference).sampler):
        get_sampler(name)
    if any(k < 1 for k in cfg.steps) or parse_setting(cfg.reference).steps < 1:
        raise ConfigError(f"step counts must be positive, got {list(cfg.steps)} and {cfg.reference!r}")
    if not cfg.match_sigmas >= 0:
        raise ConfigError(f"--match-sigmas must be >= 0, got {cfg.match_sigmas}")
    if cfg.repeat_seed is not None and cfg.repeat_seed == cfg.seed:
        raise ConfigError(f"--repeat-seed must differ from --seed ({cfg.seed})")
    return cfg


def compare_samplers(
    model: Any,
    cfg: SamplersConfig,
    judge: Judge,
    draw: Draw,
    out: str | Path,
    *,
    about: dict[str, Any],
    say: Say | None = None,
) -> dict[str, Any]:
    """Measure every setting of ``cfg`` on ``model``; write the report into ``out``; return the results."""
    validate_samplers(cfg)
    out = ensure_folder(out)
    ensure_folder(out / "grids")
    rows: list[dict[str, Any]] = []
    results = _samplers_results(cfg, judge, about, rows)
    firsts: dict[str, Tensor] = {}
    measured: dict[Setting, Measurement] = {}
    for setting in cfg.settings():
        measured[setting] = _measure(model, setting, judge, draw, say)
        rows.append(_row(setting, measured[setting], out, firsts))
        write_samplers_report(results, out, final=False)
    ref = replace(parse_setting(cfg.reference), seed=cfg.seed)
    for setting, row in zip(measured, rows, strict=True):
        row["paired"] = judge.paired(measured[setting], measured[ref])
    if cfg.repeat_seed is not None:
        again = replace(ref, seed=cfg.repeat_seed)
        m = _measure(model, again, judge, draw, say)
        difference = {k: m.values[k] - measured[ref].values[k] for k in m.values}
        results["repeat"] = {**_row(again, m, out, {}, suffix=f"-seed{again.seed}"), "difference": difference}
    results["match"] = matching_steps(rows, ref, judge.cfg.primary, cfg.match_sigmas)
    if firsts:
        save_rows(firsts, out / "grids" / "overview.png")
        results["overview"] = "grids/overview.png"
    write_samplers_report(results, out, final=True)
    return results


def _samplers_results(
    cfg: SamplersConfig, judge: Judge, about: dict[str, Any], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The results of ``compare samplers`` before any measurement: what is compared, how, and
    ``rows``, the list that each setting's row is appended to."""
    return {
        "kind": "samplers",
        **about,
        "metrics": list(judge.cfg.metrics),
        "reference_images": judge.reference_info,
        "settings": rows,
        "config": {
            "samplers": list(cfg.samplers),
            "steps": sorted(set(cfg.steps)),
            "seed": cfg.seed,
            "reference": cfg.reference,
            "match_sigmas": cfg.match_sigmas,
            "bootstrap": judge.cfg.bootstrap,
        },
    }


def _measure(model: Any, setting: Setting, judge: Judge, draw: Draw, say: Say | None) -> Measurement:
    seeded = f"{setting.name} (seed {setting.seed})"
    if say:
        say(f"{seeded}: drawing samples")
    m = judge.measure(draw(model, setting))
    if say:
        say(f"{seeded}: " + describe(m, judge))
    return m


def _row(setting: Setting, m: Measurement, out: Path, firsts: dict[str, Tensor], suffix: str = "") -> dict[str, Any]:
    """The results row of one setting; its grid is written, and its first images kept in ``firsts``."""
    row = {"sampler": setting.sampler, "steps": setting.steps, "seed": setting.seed, **m.to_dict()}
    if m.images is not None and len(m.images):
        row["grid"] = f"grids/{setting.name}{suffix}.png"
        save_grid(m.images, out / row["grid"])
        firsts[setting.name] = m.images
    return row


def describe(m: Measurement, judge: Judge) -> str:
    """One line of a measurement's figures, for ``say``: each metric with its std, and the time."""
    from ldmctl.eval.judge import METRICS

    parts = [
        f"{METRICS[k].label} {m.values[METRICS[k].key]:.4g} ± {m.std[METRICS[k].key]:.2g}" for k in judge.cfg.metrics
    ]
    return ", ".join(parts) + f", {m.seconds_per_image:.3g} s/image"


def matching_steps(rows: list[dict[str, Any]], reference: Setting, metric: Metric, sigmas: float) -> dict[str, Any]:
    """The smallest step count of each sampler whose ``metric`` matches the ``reference`` row.

    ``rows`` hold ``sampler``, ``steps``, ``seed``, ``values`` and ``std`` (dicts by metric key).
    A row matches when it is not worse than the reference by more than ``sigmas`` times the
    reference's bootstrap standard deviation (one-sided: better always matches). Only rows with
    the reference's seed count. A sampler none of whose rows match maps to None.
    """
    key = metric.key
    ref = next(
        (
            r
            for r in rows
            if (r["sampler"], r["steps"], r["seed"]) == (reference.sampler, reference.steps, reference.seed)
        ),
        None,
    )
    if ref is None:
        raise ConfigError(f"the reference setting {reference.name} was not measured")
    value, std = float(ref["values"][key]), float(ref["std"].get(key, float("nan")))
    tolerance = sigmas * std if std == std else 0.0  # NaN std (no bootstrap): exact comparison
    threshold = value + tolerance if metric.lower_is_better else value - tolerance
    steps: dict[str, int | None] = {}
    for row in sorted(rows, key=lambda r: r["steps"]):
        if row["seed"] != reference.seed:
            continue
        v = float(row["values"][key])
        good = v <= threshold if metric.lower_is_better else v >= threshold
        steps.setdefault(row["sampler"], None)
        if good and steps[row["sampler"]] is None:
            steps[row["sampler"]] = row["steps"]
    return {
        "reference": reference.name,
        "metric": key,
        "value": value,
        "std": std,
        "sigmas": sigmas,
        "tolerance": tolerance,
        "threshold": threshold,
        "lower_is_better": metric.lower_is_better,
        "steps": steps,
    }


def sample_draw(
    n: int,
    guidance: float,
    batch_size: int,
    inputs: Mapping[str, Sequence[str]] | None = None,
    *,
    defaults: Mapping[str, Sequence[Any]] | None = None,
    progress: Callable[[Setting], Callable[[int], None] | None] | None = None,
    precision: str = "fp32",
) -> Draw:
    """``draw(model, setting)``: N samples of ``setting`` as ``ldmctl sample`` draws them (on the
    model's device, in ``precision``), the conditioners fed from ``inputs`` (``--input`` values by
    key), else ``defaults`` (e.g. the judge's prompts), else their own defaults.
    ``progress(setting)`` may return ``on_progress``."""
    from ldmctl.samplers import get_sampler
    from ldmctl.sampling import generate, sampling_conditions

    def draw(model: Any, setting: Setting) -> Iterator[tuple[Tensor, dict[str, Any]]]:
        conditions = sampling_conditions(model, n, inputs, defaults)
        return generate(
            model,
            get_sampler(setting.sampler),
            n,
            steps=setting.steps,
            seed=setting.seed,
            conditions=conditions,
            guidance=guidance,
            batch_size=batch_size,
            on_progress=progress(setting) if progress else None,
            precision=precision,
        )

    return draw


__all__ = [
    "Draw",
    "Say",
    "SamplersConfig",
    "Setting",
    "compare_samplers",
    "describe",
    "matching_steps",
    "parse_setting",
    "sample_draw",
    "validate_samplers",
]
