"""``ldmctl compare``: one model under several samplers, or several training configs at one budget.

* :func:`compare_samplers` draws the same N samples of one checkpoint with every (sampler,
  steps): the same seed, hence the same initial noise, class labels and prompts, so settings
  differ only in how they integrate. Each setting is measured by a
  :class:`~ldmctl.eval.judge.Judge` and timed.
* :func:`compare_training` trains every variant for the same number of steps and measures its
  EMA weights at every checkpoint, with the training wall time so far (evaluation excluded).
* :func:`matching_steps` is the rule behind "at what step count does DPM-Solver++ match DDIM-50":
  the smallest step count of each sampler whose quality is not worse than the reference
  setting's by more than ``sigmas`` bootstrap standard deviations of the reference.

Drawing is the caller's: ``draw(model, setting)`` yields ``(images, batch)`` pairs for the N
samples. :func:`sample_draw` makes one from ``ldmctl sample``'s pipeline (:mod:`ldmctl.sampling`,
``--input`` values included), so a setting's figures are what ``ldmctl sample`` / ``ldmctl eval``
give with the same options. Both comparisons write DIR/results.json
(after every measurement, so an interrupted run keeps what it measured), PNG plots and grids,
and DIR/report.md (:mod:`ldmctl.eval.compare_report`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from ldmctl.files import ensure_folder
from ldmctl.config import LDMTrainingConfig
from ldmctl.errors import ConfigError
from ldmctl.eval.compare_report import write_samplers_report, write_training_report
from ldmctl.eval.judge import Judge, Measurement, Metric
from ldmctl.eval.plots import save_grid, save_rows

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


def compare_samplers(model: Any, cfg: SamplersConfig, judge: Judge, draw: Draw, out: str | Path, *,
                     about: dict[str, Any], say: Say | None = None) -> dict[str, Any]:
    """Measure every setting of ``cfg`` on ``model``; write the report into ``out``; return the results."""
    validate_samplers(cfg)
    out = ensure_folder(out)
    ensure_folder(out / "grids")
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"kind": "samplers", **about, "metrics": list(judge.cfg.metrics),
                               "reference_images": judge.reference_info, "settings": rows,
                               "config": {"samplers": list(cfg.samplers), "steps": sorted(set(cfg.steps)),
                                          "seed": cfg.seed, "reference": cfg.reference,
                                          "match_sigmas": cfg.match_sigmas, "bootstrap": judge.cfg.bootstrap}}
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
        results["repeat"] = {**_row(again, m, out, {}, suffix=f"-seed{again.seed}"),
                             "difference": {k: m.values[k] - measured[ref].values[k] for k in m.values}}
    results["match"] = matching_steps(rows, ref, judge.cfg.primary, cfg.match_sigmas)
    if firsts:
        save_rows(firsts, out / "grids" / "overview.png")
        results["overview"] = "grids/overview.png"
    write_samplers_report(results, out, final=True)
    return results


def _measure(model: Any, setting: Setting, judge: Judge, draw: Draw, say: Say | None) -> Measurement:
    seeded = f"{setting.name} (seed {setting.seed})"
    if say:
        say(f"{seeded}: drawing samples")
    m = judge.measure(draw(model, setting))
    if say:
        say(f"{seeded}: " + _summary(m, judge))
    return m


def _row(setting: Setting, m: Measurement, out: Path, firsts: dict[str, Tensor], suffix: str = "") -> dict[str, Any]:
    """The results row of one setting; its grid is written, and its first images kept in ``firsts``."""
    row = {"sampler": setting.sampler, "steps": setting.steps, "seed": setting.seed, **m.to_dict()}
    if m.images is not None and len(m.images):
        row["grid"] = f"grids/{setting.name}{suffix}.png"
        save_grid(m.images, out / row["grid"])
        firsts[setting.name] = m.images
    return row


def _summary(m: Measurement, judge: Judge) -> str:
    from ldmctl.eval.judge import METRICS

    parts = [f"{METRICS[k].label} {m.values[METRICS[k].key]:.4g} ± {m.std[METRICS[k].key]:.2g}" for k in judge.cfg.metrics]
    return ", ".join(parts) + f", {m.seconds_per_image:.3g} s/image"


def matching_steps(rows: list[dict[str, Any]], reference: Setting, metric: Metric,
                   sigmas: float) -> dict[str, Any]:
    """The smallest step count of each sampler whose ``metric`` matches the ``reference`` row.

    ``rows`` hold ``sampler``, ``steps``, ``seed``, ``values`` and ``std`` (dicts by metric key).
    A row matches when it is not worse than the reference by more than ``sigmas`` times the
    reference's bootstrap standard deviation (one-sided: better always matches). Only rows with
    the reference's seed count. A sampler none of whose rows match maps to None.
    """
    key = metric.key
    ref = next((r for r in rows if (r["sampler"], r["steps"], r["seed"]) ==
                (reference.sampler, reference.steps, reference.seed)), None)
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
    return {"reference": reference.name, "metric": key, "value": value, "std": std, "sigmas": sigmas,
            "tolerance": tolerance, "threshold": threshold, "lower_is_better": metric.lower_is_better,
            "steps": steps}


@dataclass(frozen=True)
class TrainingConfig:
    """How ``compare train`` measures the variants while they train."""

    setting: Setting = Setting("dpmpp", 20)  # sampler, steps and seed of every evaluation
    eval_every: int = 0  # steps between evaluations (= checkpoints); 0: each variant's train.save_every


def sample_draw(n: int, guidance: float, batch_size: int, inputs: Mapping[str, Sequence[str]] | None = None, *,
                defaults: Mapping[str, Sequence[Any]] | None = None,
                progress: Callable[[Setting], Callable[[int], None] | None] | None = None) -> Draw:
    """``draw(model, setting)``: N samples of ``setting`` as ``ldmctl sample`` draws them, the
    conditioners fed from ``inputs`` (``--input`` values by key), else ``defaults`` (e.g. the
    judge's prompts), else their own defaults. ``progress(setting)`` may return ``on_progress``."""
    from ldmctl.samplers import get_sampler
    from ldmctl.sampling import generate, sampling_conditions

    def draw(model: Any, setting: Setting) -> Iterator[tuple[Tensor, dict[str, Any]]]:
        conditions = sampling_conditions(model, n, inputs, defaults)
        return generate(model, get_sampler(setting.sampler), n, steps=setting.steps, seed=setting.seed,
                        conditions=conditions, guidance=guidance, batch_size=batch_size,
                        on_progress=progress(setting) if progress else None)

    return draw


def conditioning_readers(cfg: LDMTrainingConfig) -> dict[str, str]:
    """The batch keys (``label``, ``caption``, ...) the conditioners of a training config read, each
    with the name of the (first) conditioner that reads it."""
    from ldmctl.conditioning.registry import get_conditioner

    readers: dict[str, str] = {}
    for spec in cfg.model.conditioners:
        readers.setdefault(get_conditioner(spec.name).cls.input_key, spec.name)
    return readers


def conditioning_keys(cfg: LDMTrainingConfig) -> set[str]:
    """The batch keys (``label``, ``caption``, ...) the conditioners of a training config read."""
    return set(conditioning_readers(cfg))


def check_variants(variants: list[tuple[str, LDMTrainingConfig]]) -> None:
    """Refuse variants that cannot be compared: repeated names, other conditioning inputs, other sizes."""
    names = [n for n, _ in variants]
    if len(variants) < 1:
        raise ConfigError("compare train needs at least one --config")
    if len(set(names)) != len(names):
        raise ConfigError(f"variant names repeat: {names}", hint="name the config files differently")
    first_keys, first_size = conditioning_keys(variants[0][1]), variants[0][1].data.size
    for name, cfg in variants[1:]:
        if conditioning_keys(cfg) != first_keys or cfg.data.size != first_size:
            raise ConfigError(f"variant {name!r} is conditioned on {sorted(conditioning_keys(cfg))} at "
                              f"{cfg.data.size} px, {variants[0][0]!r} on {sorted(first_keys)} at {first_size} px",
                              hint="compare variants that are sampled and measured alike")


def compare_training(variants: list[tuple[str, LDMTrainingConfig]], ae: str | Path, cfg: TrainingConfig,
                     judge: Judge, draw: Draw, out: str | Path, *, about: dict[str, Any],
                     watch: Callable[[str, LDMTrainingConfig], Any] | None = None,
                     say: Say | None = None) -> dict[str, Any]:
    """Train each variant into ``out/<name>`` and measure it at every checkpoint; write the report.

    ``watch(name, cfg)`` may return :class:`~ldmctl.train.loop.Callbacks` to follow a variant's
    training (a progress bar); evaluation is added to its ``on_save``.
    """
    check_variants(variants)
    if cfg.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0, got {cfg.eval_every}")
    for name, _ in variants:  # before the first variant trains, not after
        if (Path(out) / name / "config.json").exists():
            raise ConfigError(f"{str(Path(out) / name)!r} already holds a run",
                              hint="choose another --out (compare train starts every variant afresh)")
    out = ensure_folder(out)
    ensure_folder(out / "grids")
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"kind": "training", **about, "metrics": list(judge.cfg.metrics),
                               "reference_images": judge.reference_info, "variants": rows,
                               "setting": {"sampler": cfg.setting.sampler, "steps": cfg.setting.steps,
                                           "seed": cfg.setting.seed}}
    finals: dict[str, Tensor] = {}
    for name, vcfg in variants:
        every = cfg.eval_every or vcfg.train.save_every
        vcfg = replace(vcfg, train=replace(vcfg.train, save_every=every))
        row: dict[str, Any] = {"name": name, "max_steps": vcfg.train.max_steps, "eval_every": every,
                               "run": str(out / name), "points": []}
        rows.append(row)
        summary = _train_variant(name, vcfg, ae, cfg, judge, draw, out, row, results, watch, say, finals)
        row["summary"] = {k: summary.get(k) for k in ("steps", "seconds", "steps_per_s", "interrupted")}
        write_training_report(results, out, final=False)
        if summary.get("interrupted"):
            break
    if finals:
        save_rows(finals, out / "grids" / "overview.png")
        results["overview"] = "grids/overview.png"
    write_training_report(results, out, final=True)
    return results


def _train_variant(name: str, vcfg: LDMTrainingConfig, ae: str | Path, cfg: TrainingConfig, judge: Judge,
                   draw: Draw, out: Path, row: dict[str, Any], results: dict[str, Any],
                   watch: Callable[[str, LDMTrainingConfig], Any] | None, say: Say | None,
                   finals: dict[str, Tensor]) -> dict[str, Any]:
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.train.ldm import train_ldm
    from ldmctl.train.loop import Callbacks

    base = (watch(name, vcfg) if watch else None) or Callbacks()
    started, evaluating = time.perf_counter(), [0.0]

    def on_save(step: int, path: str) -> None:
        if base.on_save:
            base.on_save(step, path)
        train_seconds = time.perf_counter() - started - evaluating[0]
        t = time.perf_counter()
        if say:
            say(f"{name} step {step}: measuring the EMA weights")
        m = judge.measure(draw(load_ldm(path, weights="ema"), cfg.setting))
        point = {"step": step, "train_seconds": round(train_seconds, 2), **m.to_dict()}
        if m.images is not None and len(m.images):
            point["grid"] = f"grids/{name}-step{step:07d}.png"
            save_grid(m.images, out / point["grid"])
            finals[name] = m.images
        row["points"].append(point)
        write_training_report(results, out, final=False)
        evaluating[0] += time.perf_counter() - t
        if say:
            say(f"{name} step {step}: " + _summary(m, judge))

    return train_ldm(vcfg, ae, out / name, callbacks=replace(base, on_save=on_save))


__all__ = ["Draw", "SamplersConfig", "Setting", "TrainingConfig", "check_variants", "compare_samplers",
           "compare_training", "conditioning_keys", "conditioning_readers", "matching_steps", "parse_setting",
           "sample_draw", "validate_samplers"]
