"""Measure one stream of samples for ``ldmctl compare``: quality metrics and how noisy they are.

A :class:`Judge` is built once per comparison. It holds what every setting is measured against
(the reference images' features, the classifier, the prompts of a text-conditional model) and
turns one stream of sampled batches into a :class:`Measurement`: each metric on all N samples,
its standard deviation over a bootstrap of those N samples (drawn with replacement), the
per-class rows and the first images for the grids. The metric code is the one ``ldmctl eval``
uses (:mod:`ldmctl.eval.generative`: features, Fréchet distance, per-class rows) and the
``builtin:shapes`` checker (:mod:`ldmctl.eval.shapes_check`).

| metric | key | better | needs |
|---|---|---|---|
| ``fd-cls`` | ``fd_cls`` | lower | ``--classifier`` and reference images (``--ref``) |
| ``acc`` | ``acc`` | higher | ``--classifier`` and a class-conditional model |
| ``fid`` | ``fid`` | lower | the FID Inception weights and reference images |
| ``shapes`` | ``shapes_match`` | higher | a text-conditional model; prompts are builtin:shapes captions |

The bootstrap standard deviation estimates how much a metric would move if the same setting
were drawn again with other seeds. For Fréchet distances it is approximate: a resample repeats
images, which biases each resampled value upwards, but their spread is still the right size
(``--repeat-seed`` of ``compare samplers`` checks it against a real second seed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ldmctl.config import DataConfig
from ldmctl.errors import ConfigError
from ldmctl.eval.generative import (
    DESCRIPTIONS,
    Batch,
    Collected,
    Extractors,
    collect,
    dataset_batches,
    per_class,
    pick_indices,
)
from ldmctl.eval.metrics import quantize_8bit

PROMPT_SEED = 12345  # builtin:shapes prompts: bench/shapes_score.py's seed, never a training stream's


@dataclass(frozen=True)
class Metric:
    """One quality metric of a comparison: its JSON key, its name in tables and its direction."""

    key: str
    label: str
    lower_is_better: bool
    about: str


METRICS: dict[str, Metric] = {
    "fd-cls": Metric("fd_cls", "FD_cls", True, DESCRIPTIONS["fd_cls"]),
    "acc": Metric("acc", "accuracy", False, DESCRIPTIONS["acc"]),
    "fid": Metric("fid", "FID", True, DESCRIPTIONS["fid"]),
    "shapes": Metric(
        "shapes_match",
        "shapes match",
        False,
        "shapes match: share of samples the builtin:shapes checker finds as their prompt says",
    ),
}


@dataclass(frozen=True)
class JudgeConfig:
    """What a comparison measures and against what."""

    metrics: tuple[str, ...] = ("fd-cls",)  # keys of METRICS; the first decides which settings match
    ref: str | None = None  # reference images (folder or builtin:NAME) for fd-cls and fid
    ref_limit: int = 0  # use at most this many reference images, drawn at random (0: all)
    classifier: str | None = None  # ldmctl classifier checkpoint (fd-cls, acc)
    inception_weights: str | None = None  # FID Inception weights (fid); default: where `eval` looks
    bootstrap: int = 200  # resamples of the N samples for each metric's standard deviation
    seed: int = 0  # seed of the reference subset and of the bootstrap
    grid_count: int = 40  # samples kept for the grids

    @property
    def primary(self) -> Metric:
        return METRICS[self.metrics[0]]


def resolve_metrics(spec: str, *, keys: set[str], classifier: bool) -> tuple[str, ...]:
    """The metrics of ``--metrics``: ``auto`` or a comma-separated list of :data:`METRICS` names.

    ``auto`` is ``shapes`` for a text-conditional model, ``fd-cls`` (and ``acc`` for a
    class-conditional model) with a classifier, and ``fid`` otherwise. ``keys`` are the batch
    keys the model's conditioners read (``label``, ``caption``).
    """
    if spec.strip() == "auto":
        if "caption" in keys:
            return ("shapes",)
        if classifier:
            return ("fd-cls", "acc") if "label" in keys else ("fd-cls",)
        return ("fid",)
    names = tuple(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ConfigError(
            f"--metrics {spec!r}: unknown {unknown}; use auto or a comma-separated list of {list(METRICS)}",
            hint="KID and the CLIP score are in `ldmctl eval`",
        )
    return names


@dataclass
class Measurement:
    """The quality of one set of N samples, and what drawing them cost."""

    n: int
    seconds: float  # wall time spent drawing the samples (sampling + decoding), metrics excluded
    values: dict[str, float]  # metric key -> value on all N samples
    std: dict[str, float]  # metric key -> bootstrap standard deviation
    per_class: list[dict[str, Any]] = field(default_factory=list)
    images: Tensor | None = None  # (K, 3, H, W) in [-1, 1]: the first samples, for grids
    collected: Collected | None = field(default=None, repr=False)  # features etc., for paired differences
    verdicts: Tensor | None = field(default=None, repr=False)  # (N,) shapes checker verdicts

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.n, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "seconds": round(self.seconds, 3),
            "seconds_per_image": self.seconds_per_image,
            "values": self.values,
            "std": self.std,
            "per_class": self.per_class,
        }


class Judge:
    """Measures sample streams against one fixed reference (see the module docstring)."""

    def __init__(
        self,
        cfg: JudgeConfig,
        *,
        extractors: Extractors,
        reference: Collected | None = None,
        prompts: list[str] | None = None,
        class_names: list[str] | None = None,
        reference_info: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.extractors, self.reference = cfg, extractors, reference
        self.prompts, self.class_names = prompts, class_names or []
        self.reference_info = reference_info or {}
        self._stats: dict[str, tuple[Tensor, Tensor]] = {}

    @classmethod
    def build(
        cls,
        cfg: JudgeConfig,
        *,
        keys: set[str],
        size: int,
        n: int,
        given: Collection[str] = (),
        device: torch.device | None = None,
    ) -> Judge:
        """Check that every metric can run on samples of a model whose conditioners read ``keys``,
        load the extractors (onto ``device``, default the CPU), collect the reference features and
        pick the prompts (unless the user gives the captions: ``"caption"`` in ``given``, the keys
        of ``--input``)."""
        from ldmctl.eval.classifier import load_classifier

        _check(cfg, keys)
        ex = Extractors()
        if {"fd-cls", "acc"} & set(cfg.metrics):
            ex.classifier = load_classifier(cfg.classifier)
        if "fid" in cfg.metrics:
            from ldmctl.eval.inception import load_inception

            ex.inception = load_inception(cfg.inception_weights)
        if device is not None:
            ex.to(device)
        pick = "caption" in keys and "caption" not in given
        reference, info, names, prompts = None, {}, [], None
        if {"fd-cls", "fid"} & set(cfg.metrics):
            reference, info, names, captions = _reference(cfg, ex, size, n if pick else 0)
            prompts = captions or None
        if pick and "shapes" in cfg.metrics:
            prompts = shapes_prompts(n, size)
        elif pick and not prompts:
            raise ConfigError(
                f"this model is text-conditional, but --ref {cfg.ref!r} has no captions to prompt it with",
                hint="use a captioned --ref (e.g. builtin:shapes), --metrics shapes, or --input caption=...",
            )
        return cls(cfg, extractors=ex, reference=reference, prompts=prompts, class_names=names, reference_info=info)

    def measure(self, stream: Iterable[tuple[Tensor, dict[str, Any]]]) -> Measurement:
        """Measure the samples of ``stream`` (``(images (B, 3, H, W) in [-1, 1], batch)`` pairs,
        as ``ldmctl sample``'s generate yields them), rounded to 8 bits as a PNG stores them."""
        tap = _Tap(self.cfg.grid_count, shapes="shapes" in self.cfg.metrics)
        c = collect(tap.batches(stream), self.extractors)
        if c.n < 2:
            raise ConfigError(f"a comparison needs at least 2 samples per setting, got {c.n}")
        verdicts = torch.tensor(tap.verdicts, dtype=torch.float64) if tap.verdicts else None
        everything = torch.arange(c.n)
        values = {METRICS[m].key: self._value(m, c, verdicts, everything) for m in self.cfg.metrics}
        std = {METRICS[m].key: self._bootstrap(m, c, verdicts) for m in self.cfg.metrics}
        rows = []
        if c.labels is not None and c.classifier is not None and self.reference is not None:
            rows = per_class(c, self.reference, self.class_names)
        return Measurement(c.n, tap.seconds, values, std, rows, tap.images(), c, verdicts)

    def paired(self, a: Measurement, b: Measurement) -> dict[str, dict[str, float]]:
        """``a - b`` for every metric, with the bootstrap standard deviation of that difference.

        Sample ``i`` of ``a`` and of ``b`` must share their seed and condition (``compare
        samplers`` draws every setting so); each resample then takes the same indices from both,
        so the noise the two sets share cancels and what remains is the difference the settings make.
        """
        if a.collected is None or b.collected is None or a.n != b.n:
            raise ValueError("paired differences need two measurements of the same number of samples")
        g = torch.Generator().manual_seed(self.cfg.seed)
        resamples = [torch.randint(a.n, (a.n,), generator=g) for _ in range(self.cfg.bootstrap)]
        out = {}
        for m in self.cfg.metrics:

            def diff(idx: Tensor, m: str = m) -> float:
                return self._value(m, a.collected, a.verdicts, idx) - self._value(m, b.collected, b.verdicts, idx)

            draws = torch.tensor([diff(idx) for idx in resamples], dtype=torch.float64)
            out[METRICS[m].key] = {
                "difference": diff(torch.arange(a.n)),
                "std": float(draws.std()) if len(resamples) > 1 else math.nan,
            }
        return out

    def _value(self, metric: str, c: Collected, verdicts: Tensor | None, idx: Tensor) -> float:
        if metric == "fd-cls":
            return self._frechet(c.classifier[idx], "classifier")
        if metric == "fid":
            return self._frechet(c.inception[idx], "inception")
        if metric == "acc":
            if c.labels is None:
                raise ConfigError("accuracy needs class-labelled samples: a class-conditional model")
            return float((c.predicted[idx] == c.labels[idx]).double().mean())
        if verdicts is None:  # shapes
            raise ConfigError("the shapes metric needs prompts: a text-conditional model")
        return float(verdicts[idx].mean())

    def _frechet(self, features: Tensor, space: str) -> float:
        """The Fréchet distance to the reference, the reference's Gaussian fitted once.

        The route follows :func:`~ldmctl.eval.frechet.frechet_distance_features`, which gives the
        same value; only the covariance route can reuse the reference's fit across resamples.
        """
        from ldmctl.eval.frechet import frechet_distance, frechet_distance_features, gaussian_stats

        ref = getattr(self.reference, space)
        n, m, d = features.shape[0], ref.shape[0], ref.shape[1]
        if n * m * min(n, m) < d**3:
            return frechet_distance_features(features, ref)
        if space not in self._stats:
            self._stats[space] = gaussian_stats(ref)
        return frechet_distance(*gaussian_stats(features), *self._stats[space])

    def _bootstrap(self, metric: str, c: Collected, verdicts: Tensor | None) -> float:
        if self.cfg.bootstrap < 2:
            return math.nan
        g = torch.Generator().manual_seed(self.cfg.seed)
        draws = [
            self._value(metric, c, verdicts, torch.randint(c.n, (c.n,), generator=g)) for _ in range(self.cfg.bootstrap)
        ]
        return float(torch.tensor(draws, dtype=torch.float64).std())


def _check(cfg: JudgeConfig, keys: set[str]) -> None:
    """Refuse, before any long step, a metric that cannot run on this model with these options."""
    wanted = set(cfg.metrics)
    if wanted & {"fd-cls", "acc"} and not cfg.classifier:
        raise ConfigError(
            "FD_cls and accuracy need --classifier CKPT",
            hint="train one: ldmctl train-classifier --data REF --out-file CKPT",
        )
    if "acc" in wanted and "label" not in keys:
        raise ConfigError("accuracy needs a class-conditional model (its samples carry the class they were drawn for)")
    if wanted & {"fd-cls", "fid"} and not cfg.ref:
        raise ConfigError(
            "FD_cls and FID compare the samples with reference images: pass --ref "
            "(a folder or builtin:NAME, e.g. builtin:fashion-test)"
        )
    if "shapes" in wanted and "caption" not in keys:
        raise ConfigError("the shapes metric needs a text-conditional model trained on builtin:shapes")
    if cfg.bootstrap < 0 or cfg.ref_limit < 0 or cfg.grid_count < 0:
        raise ConfigError("--bootstrap and --ref-limit must be >= 0")


def _reference(
    cfg: JudgeConfig, ex: Extractors, size: int, captions: int
) -> tuple[Collected, dict[str, Any], list[str], list[str]]:
    """Features of the reference images (short side resized to ``size``, center crop) and the
    captions of its first ``captions`` items (the prompts of a text-conditional model)."""
    from ldmctl.data import open_dataset

    dataset = open_dataset(DataConfig(source=cfg.ref, size=size, crop="center", resize=True, flip=False))
    indices = pick_indices(len(dataset), cfg.ref_limit, cfg.seed)
    ref = collect(dataset_batches(dataset, indices), ex)
    if ref.n < 2:
        raise ConfigError(f"--ref {cfg.ref!r} holds {ref.n} image(s); the metrics need at least 2")
    info: dict[str, Any] = {"ref": cfg.ref, "n_reference": ref.n}
    if ref.labels is not None and ref.predicted is not None:
        info["acc_reference"] = float((ref.predicted == ref.labels).double().mean())
    texts = [str(dataset[i].get("caption") or "") for i in range(min(captions, len(dataset)))]
    return ref, info, list(getattr(dataset, "class_names", []) or []), [t for t in texts if t]


def shapes_prompts(n: int, size: int = 32) -> list[str]:
    """The captions of the first ``n`` builtin:shapes items drawn with :data:`PROMPT_SEED`: the
    prompts bench/shapes_score.py and docs/conditioning-comparison.md use."""
    from ldmctl.data.shapes import ShapesDataset

    dataset = ShapesDataset(DataConfig(source="builtin:shapes", size=size), seed=PROMPT_SEED, length=n)
    return [dataset[i]["caption"] for i in range(n)]


class _Tap:
    """Passes a sample stream on as :class:`Batch`es, timing the drawing and keeping what the
    features do not: the first images, and the shapes checker's verdict on every image."""

    def __init__(self, keep: int, *, shapes: bool) -> None:
        self.keep, self.shapes = keep, shapes
        self.seconds, self.kept, self.verdicts = 0.0, [], []

    def batches(self, stream: Iterable[tuple[Tensor, dict[str, Any]]]) -> Iterator[Batch]:
        from ldmctl.eval.shapes_check import check

        it = iter(stream)
        while True:
            started = time.perf_counter()
            try:
                images, batch = next(it)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - started
            images = quantize_8bit((images.detach().float().cpu() + 1) / 2) * 2 - 1
            prompts = list(batch["caption"]) if batch.get("caption") is not None else None
            if self.shapes:
                self.verdicts += [check(img, p)["match"] for img, p in zip(images, prompts or [], strict=True)]
            if sum(k.shape[0] for k in self.kept) < self.keep:
                self.kept.append(images[: self.keep])
            yield Batch(images, batch.get("label"), prompts)

    def images(self) -> Tensor | None:
        return torch.cat(self.kept)[: self.keep] if self.kept else None


__all__ = [
    "METRICS",
    "PROMPT_SEED",
    "Judge",
    "JudgeConfig",
    "Measurement",
    "Metric",
    "resolve_metrics",
    "shapes_prompts",
]
