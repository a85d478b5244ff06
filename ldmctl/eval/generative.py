"""Generative quality of an image set against a reference set: FID, KID, CLIP score, FD_cls, acc.

Images flow through in batches (:class:`Batch`); :func:`collect` keeps only what the metrics
need (features, predicted classes, per-image CLIP scores), so sets of any size fit in memory.
:func:`generative_report` turns two collected sets into a JSON-able report.

| metric | feature space | needs |
|---|---|---|
| ``fid`` | Inception-v3 pool3 (:mod:`ldmctl.eval.inception`) | the FID Inception weights |
| ``kid`` | the same (:mod:`ldmctl.eval.kid`) | the FID Inception weights |
| ``clip`` | CLIP image/text embeddings (:mod:`ldmctl.eval.clip`) | CLIP weights and a prompt per image |
| ``fd-cls`` | the penultimate layer of an ldmctl classifier (:mod:`ldmctl.eval.classifier`) | ``ldmctl train-classifier`` |
| ``acc`` | that classifier's predictions vs the labels the samples were drawn for | the classifier, labelled samples |

FD_cls is the Fréchet distance in the ldmctl classifier's feature space; it is never FID and
is not comparable with published FIDs. For class-conditional samples the report also holds
FD_cls and accuracy per class (each class's samples against that class's reference images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from ldmctl.device import full_fp32, module_device
from ldmctl.errors import ConfigError, LdmctlError
from ldmctl.eval.classifier import FeatureClassifier
from ldmctl.eval.frechet import frechet_distance_features
from ldmctl.eval.kid import DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS, kernel_inception_distance

METRICS = ("fid", "kid", "clip", "fd-cls", "acc")
DESCRIPTIONS = {
    "fid": "FID: Fréchet distance of Inception-v3 pool3 features (FID Inception weights)",
    "kid": "KID: unbiased MMD^2 of Inception-v3 pool3 features, cubic kernel; mean ± std over subsets",
    "clip_score": "CLIP score: 100 * max(cos(image, prompt), 0), mean over images",
    "fd_cls": "FD_cls: Fréchet distance in the feature space of the ldmctl classifier (not FID)",
    "acc": "accuracy: the ldmctl classifier predicts the class each sample was drawn for",
    "acc_reference": "accuracy of the ldmctl classifier on the labelled reference images",
}


@dataclass
class Batch:
    """Images (B, 3, H, W) in [-1, 1], their class labels (B,) (-1: none) and prompts (or None)."""

    images: Tensor
    labels: Tensor | None = None
    prompts: list[str] | None = None


@dataclass
class Extractors:
    """The networks that turn images into metric inputs; None where a metric is not computed."""

    inception: nn.Module | None = None
    classifier: FeatureClassifier | None = None
    clip: nn.Module | None = None  # a ClipScorer: (images, prompts) -> per-image score

    def to(self, device: torch.device) -> Extractors:
        """Move every network to ``device``; each moves its input images there itself. They
        compute in float32 whatever the ``--precision`` of the model under test, so figures stay
        comparable across precisions."""
        for name in ("inception", "classifier", "clip"):
            net = getattr(self, name)
            if net is not None:
                setattr(self, name, net.to(device))
        return self


@dataclass
class Collected:
    """What the metrics need from one image set."""

    n: int = 0
    inception: Tensor | None = None  # (N, 2048)
    classifier: Tensor | None = None  # (N, feature_dim)
    predicted: Tensor | None = None  # (N,) classifier predictions
    labels: Tensor | None = None  # (N,) class labels, -1 where unknown; None if no item has one
    clip: Tensor | None = None  # (N,) per-image CLIP score
    prompts: list[str] = field(default_factory=list)  # non-empty prompts/captions seen, in order


def collect(
    batches: Iterable[Batch], ex: Extractors, *, clip: bool = False, on_batch: Callable[[int], None] | None = None
) -> Collected:
    """Run every extractor of ``ex`` over ``batches``; ``clip`` also scores image-prompt pairs."""
    parts: dict[str, list[Tensor]] = {"inception": [], "classifier": [], "predicted": [], "labels": [], "clip": []}
    out = Collected()
    with torch.no_grad(), full_fp32():  # the features are fp32 on every device: no TF32 on CUDA
        for batch in batches:
            x = batch.images.float()
            if ex.inception is not None:
                parts["inception"].append(ex.inception(x).cpu())
            if ex.classifier is not None:
                feats = ex.classifier.features(x.to(module_device(ex.classifier)))
                parts["classifier"].append(feats.cpu())
                parts["predicted"].append(ex.classifier.head(feats).argmax(1).cpu())
            labels = torch.as_tensor(batch.labels if batch.labels is not None else [-1] * x.shape[0]).long().cpu()
            _check_labels(labels, ex.classifier)
            parts["labels"].append(labels)
            if clip and ex.clip is not None:
                if not batch.prompts or any(not p for p in batch.prompts):
                    raise ConfigError(
                        "the CLIP score needs a prompt for every image",
                        hint="pass --prompt, or evaluate images that have captions",
                    )
                parts["clip"].append(ex.clip(x, batch.prompts).cpu())
            out.prompts += [p for p in (batch.prompts or []) if p]
            out.n += x.shape[0]
            if on_batch is not None:
                on_batch(x.shape[0])
    for name, chunks in parts.items():
        setattr(out, name, torch.cat(chunks) if chunks else None)
    if out.labels is not None and bool((out.labels < 0).all()):
        out.labels = None
    return out


def _check_labels(labels: Tensor, classifier: FeatureClassifier | None) -> None:
    if classifier is not None and labels.numel() and int(labels.max()) >= classifier.config.num_classes:
        raise ConfigError(
            f"the classifier knows {classifier.config.num_classes} classes, but an image has "
            f"class label {int(labels.max())}",
            hint="train the classifier on the data set the model was trained on",
        )


def dataset_batches(dataset: Dataset, indices: list[int], batch_size: int = 64) -> Iterator[Batch]:
    """:class:`Batch`es of the items ``indices`` of a data set of dicts (``image``, ``label``, ``caption``)."""
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        images = default_collate([it["image"] for it in items])
        labels = torch.tensor([int(it.get("label", -1)) for it in items])
        captions = [str(it.get("caption") or "") for it in items]
        yield Batch(images, labels, captions if any(captions) else None)


def pick_indices(total: int, limit: int, seed: int) -> list[int]:
    """All of ``range(total)``, or ``limit`` of them drawn at random (seeded) and sorted."""
    if limit <= 0 or limit >= total:
        return list(range(total))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=g)[:limit].tolist())


def choose_metrics(spec: str, problems: dict[str, LdmctlError | None]) -> tuple[list[str], dict[str, str]]:
    """The metrics to compute, and why each other one is skipped.

    ``spec`` is ``auto`` or a comma-separated list of :data:`METRICS`. ``problems`` maps each
    metric to None (computable here) or the error that stops it. ``auto`` takes every computable
    metric; a metric named explicitly must be computable, or its error is raised.
    """
    if spec.strip() == "auto":
        chosen = [m for m in METRICS if problems.get(m) is None]
        skipped = {m: str(err) for m, err in problems.items() if err is not None}
        if not chosen:
            reasons = "; ".join(f"{m}: {r}" for m, r in skipped.items())
            raise ConfigError(
                f"no metric can be computed here ({reasons})",
                hint="put the FID Inception weights in place (see docs/metrics.md), or train "
                "the offline feature extractor with `ldmctl train-classifier` and pass "
                "--classifier CKPT",
            )
        return chosen, skipped
    chosen = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise ConfigError(
            f"--metrics {spec!r}: unknown {unknown}; use auto or a comma-separated list of {list(METRICS)}"
        )
    for m in chosen:
        if problems.get(m) is not None:
            raise problems[m]  # type: ignore[misc]
    return chosen, {}


def generative_report(
    samples: Collected,
    reference: Collected,
    metrics: list[str],
    *,
    class_names: list[str] | None = None,
    kid_subsets: int = DEFAULT_SUBSETS,
    kid_subset_size: int = DEFAULT_SUBSET_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"metrics": {...}, "per_class": [...], "n_samples", "n_reference", "descriptions"}``."""
    for name, c in (("samples", samples), ("reference", reference)):
        if c.n < 2:
            raise ConfigError(f"the {name} hold {c.n} image(s); these metrics need at least 2")
    out: dict[str, Any] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance_features(samples.inception, reference.inception)
    if "kid" in metrics:
        g = torch.Generator().manual_seed(seed)
        out["kid"], out["kid_std"] = kernel_inception_distance(
            samples.inception, reference.inception, subsets=kid_subsets, subset_size=kid_subset_size, generator=g
        )
    if "clip" in metrics:
        out["clip_score"] = float(samples.clip.mean())
    if "fd-cls" in metrics:
        out["fd_cls"] = frechet_distance_features(samples.classifier, reference.classifier)
    if "acc" in metrics:
        out["acc"] = _accuracy(samples)
    if ("fd-cls" in metrics or "acc" in metrics) and reference.labels is not None:
        out["acc_reference"] = _accuracy(reference)
    report: dict[str, Any] = {
        "metrics": out,
        "n_samples": samples.n,
        "n_reference": reference.n,
        "descriptions": {k: DESCRIPTIONS[k] for k in out if k in DESCRIPTIONS},
    }
    if samples.labels is not None and samples.classifier is not None:
        report["per_class"] = per_class(samples, reference, class_names or [])
    return report


def _accuracy(c: Collected) -> float:
    known = c.labels >= 0
    if not bool(known.any()):
        return math.nan
    return float((c.predicted[known] == c.labels[known]).double().mean())


def per_class(samples: Collected, reference: Collected, class_names: list[str]) -> list[dict[str, Any]]:
    """FD_cls and accuracy of each class's samples (vs that class's reference images, if labelled)."""
    rows = []
    for label in sorted(int(v) for v in samples.labels.unique() if v >= 0):
        mine = samples.labels == label
        row: dict[str, Any] = {
            "class": class_names[label] if label < len(class_names) else str(label),
            "label": label,
            "n": int(mine.sum()),
        }
        theirs = reference.labels == label if reference.labels is not None else None
        if theirs is not None and int(mine.sum()) >= 2 and int(theirs.sum()) >= 2:
            row["fd_cls"] = frechet_distance_features(samples.classifier[mine], reference.classifier[theirs])
        else:
            row["fd_cls"] = math.nan  # a covariance needs 2 images of the class on each side
        row["acc"] = float((samples.predicted[mine] == label).double().mean())
        rows.append(row)
    return rows


__all__ = [
    "DESCRIPTIONS",
    "METRICS",
    "Batch",
    "Collected",
    "Extractors",
    "choose_metrics",
    "collect",
    "dataset_batches",
    "generative_report",
    "per_class",
    "pick_indices",
]
