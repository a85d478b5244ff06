"""``ldmctl compare train``: several training configs at one budget, measured as they train.

:func:`compare_training` trains every variant for the same number of steps and measures its EMA
weights at every checkpoint (with :mod:`ldmctl.compare.run`'s draws and a
:class:`~ldmctl.eval.judge.Judge`), with the training wall time so far (evaluation excluded);
the report is DIR/results.json, PNG plots and grids, and DIR/report.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from ldmctl.compare.report import write_training_report
from ldmctl.compare.run import Draw, Say, Setting, describe
from ldmctl.config import LDMTrainingConfig
from ldmctl.errors import ConfigError
from ldmctl.eval.judge import Judge
from ldmctl.eval.plots import save_grid, save_rows
from ldmctl.files import ensure_folder


@dataclass(frozen=True)
class TrainingConfig:
    """How ``compare train`` measures the variants while they train."""

    setting: Setting = Setting("dpmpp", 20)  # sampler, steps and seed of every evaluation
    eval_every: int = 0  # steps between evaluations (= checkpoints); 0: each variant's train.save_every
    device: str = "cpu"  # where the checkpoints are sampled for measuring (in fp32)


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
            raise ConfigError(
                f"variant {name!r} is conditioned on {sorted(conditioning_keys(cfg))} at "
                f"{cfg.data.size} px, {variants[0][0]!r} on {sorted(first_keys)} at {first_size} px",
                hint="compare variants that are sampled and measured alike",
            )


def _check_training(variants: list[tuple[str, LDMTrainingConfig]], cfg: TrainingConfig, out: Path) -> None:
    """Refuse, before the first variant trains, what would fail later: variants that cannot be
    compared, a negative ``eval_every``, a variant whose run folder already holds a run."""
    check_variants(variants)
    if cfg.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0, got {cfg.eval_every}")
    for name, _ in variants:
        if (out / name / "config.json").exists():
            raise ConfigError(
                f"{str(out / name)!r} already holds a run",
                hint="choose another --out-dir (compare train starts every variant afresh)",
            )


def _training_results(
    cfg: TrainingConfig, judge: Judge, about: dict[str, Any], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The results of ``compare train`` before any training: what is measured, how, and ``rows``,
    the list that each variant's row is appended to."""
    setting = {"sampler": cfg.setting.sampler, "steps": cfg.setting.steps, "seed": cfg.setting.seed}
    return {
        "kind": "training",
        **about,
        "metrics": list(judge.cfg.metrics),
        "reference_images": judge.reference_info,
        "variants": rows,
        "setting": setting,
    }


def compare_training(
    variants: list[tuple[str, LDMTrainingConfig]],
    ae: str | Path,
    cfg: TrainingConfig,
    judge: Judge,
    draw: Draw,
    out: str | Path,
    *,
    about: dict[str, Any],
    watch: Callable[[str, LDMTrainingConfig], Any] | None = None,
    say: Say | None = None,
) -> dict[str, Any]:
    """Train each variant into ``out/<name>`` and measure it at every checkpoint; write the report.

    ``watch(name, cfg)`` may return :class:`~ldmctl.train.loop.Callbacks` to follow a variant's
    training (a progress bar); evaluation is added to its ``on_save``.
    """
    _check_training(variants, cfg, Path(out))
    out = ensure_folder(out)
    ensure_folder(out / "grids")
    rows: list[dict[str, Any]] = []
    results = _training_results(cfg, judge, about, rows)
    finals: dict[str, Tensor] = {}
    for name, vcfg in variants:
        vcfg = replace(vcfg, train=replace(vcfg.train, save_every=cfg.eval_every or vcfg.train.save_every))
        row: dict[str, Any] = {
            "name": name,
            "max_steps": vcfg.train.max_steps,
            "eval_every": vcfg.train.save_every,  # every checkpoint is measured
            "train_device": vcfg.train.device,
            "train_precision": vcfg.train.precision,
            "run": str(out / name),
            "points": [],
        }
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


def _train_variant(
    name: str,
    vcfg: LDMTrainingConfig,
    ae: str | Path,
    cfg: TrainingConfig,
    judge: Judge,
    draw: Draw,
    out: Path,
    row: dict[str, Any],
    results: dict[str, Any],
    watch: Callable[[str, LDMTrainingConfig], Any] | None,
    say: Say | None,
    finals: dict[str, Tensor],
) -> dict[str, Any]:
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
        m = judge.measure(draw(load_ldm(path, weights="ema", device=cfg.device), cfg.setting))
        point = {"step": step, "train_seconds": round(train_seconds, 2), **m.to_dict()}
        if m.images is not None and len(m.images):
            point["grid"] = f"grids/{name}-step{step:07d}.png"
            save_grid(m.images, out / point["grid"])
            finals[name] = m.images
        row["points"].append(point)
        write_training_report(results, out, final=False)
        evaluating[0] += time.perf_counter() - t
        if say:
            say(f"{name} step {step}: " + describe(m, judge))

    return train_ldm(vcfg, ae, out / name, callbacks=replace(base, on_save=on_save))


__all__ = ["TrainingConfig", "check_variants", "compare_training", "conditioning_keys", "conditioning_readers"]
