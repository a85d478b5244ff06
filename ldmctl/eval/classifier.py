"""A small image classifier trained offline, whose penultimate layer is ldmctl's feature space.

FID needs the FID Inception weights, which cannot be downloaded here (:mod:`ldmctl.eval.inception`).
The offline alternative judges generated images in the features of a classifier that ldmctl
trains itself (``ldmctl train-classifier``; the training is :mod:`ldmctl.train.classifier`) on the
training split of a labelled data set (``builtin:digits``, ``builtin:fashion``, a folder with
class sub-folders). The Fréchet distance in that space is **FD_cls** (see
:mod:`ldmctl.eval.frechet`); never call it FID.

The network is three stages of (conv-GroupNorm-ReLU) x 2 + 2x2 average pooling, a flattened
``feature_dim`` layer (the features) and a linear head. GroupNorm keeps features independent of
the batch they are computed in. Inputs are images in [-1, 1]; other sizes are resized to
``cfg.size`` inside :meth:`FeatureClassifier.features`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, default_collate

from ldmctl.checkpoint import load_state, read_checkpoint, save_checkpoint
from ldmctl.config import from_dict, to_dict
from ldmctl.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

STAGES = 3  # each stage halves the resolution, so cfg.size must be a multiple of 2**STAGES


@dataclass(frozen=True)
class ClassifierConfig:
    """The feature classifier behind FD_cls."""

    in_channels: int = 3  # image channels
    size: int = 32  # input resolution in pixels; a multiple of 8 (other sizes are resized)
    width: int = 32  # channels of the first stage; stages use width, 2*width, 4*width
    num_classes: int = 10  # classes of the labelled data set
    feature_dim: int = 128  # width of the penultimate layer: the FD_cls feature space
    dropout: float = 0.1  # on the features, before the head, while training
    norm_groups: int = 8  # GroupNorm groups; must divide width


def validate_classifier(cfg: ClassifierConfig) -> ClassifierConfig:
    """Return ``cfg`` unchanged, or raise ConfigError naming the bad value."""
    step = 2**STAGES
    if cfg.size < step or cfg.size % step:
        raise ConfigError(f"classifier.size must be a positive multiple of {step}, got {cfg.size}")
    if cfg.width <= 0 or cfg.norm_groups <= 0 or cfg.width % cfg.norm_groups:
        raise ConfigError(f"classifier.norm_groups ({cfg.norm_groups}) must divide classifier.width ({cfg.width})")
    for name in ("in_channels", "num_classes", "feature_dim"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"classifier.{name} must be positive, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"classifier.dropout must be in [0, 1), got {cfg.dropout}")
    return cfg


def _stage(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
    )


class FeatureClassifier(nn.Module):
    """A small CNN: ``features(x)`` (N, feature_dim) and ``forward(x)`` logits (N, num_classes)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.config = validate_classifier(cfg)
        widths = [cfg.width * 2**i for i in range(STAGES)]
        self.stages = nn.Sequential(
            *[
                _stage(c_in, c_out, cfg.norm_groups)
                for c_in, c_out in zip([cfg.in_channels, *widths[:-1]], widths, strict=True)
            ]
        )
        side = cfg.size // 2**STAGES
        self.to_features = nn.Linear(widths[-1] * side * side, cfg.feature_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, feature_dim) of images (N, C, H, W) in [-1, 1]."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise DataError(f"the classifier takes (N, {cfg.in_channels}, H, W) images, got shape {tuple(x.shape)}")
        if x.shape[-2:] != (cfg.size, cfg.size):
            x = F.interpolate(x, size=(cfg.size, cfg.size), mode="bilinear", antialias=True, align_corners=False)
        h = self.stages(x)  # (N, 4*width, size/8, size/8)
        return F.relu(self.to_features(h.flatten(1)))  # (N, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))  # (N, num_classes)


# --------------------------------------------------------------------------------------------
# inference


def _batches(images: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Regroup a tensor (N, C, H, W) or an iterable of images/batches into (<= batch_size) batches."""
    if isinstance(images, Tensor):
        yield from (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
        return
    buffer: list[Tensor] = []
    count = 0
    for item in images:
        item = item.unsqueeze(0) if item.dim() == 3 else item  # a single (C, H, W) image
        buffer.append(item)
        count += item.shape[0]
        if count >= batch_size:
            yield from _batches(torch.cat(buffer), batch_size)
            buffer, count = [], 0
    if buffer:
        yield from _batches(torch.cat(buffer), batch_size)


@torch.no_grad()
def _map(
    fn: Callable[[Tensor], Tensor], model: nn.Module, images: Tensor | Iterable[Tensor], batch_size: int
) -> Tensor:
    """Apply ``fn`` batch-wise in eval mode (restoring the model's mode), concatenated on CPU."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outs = [fn(b.to(device=device, dtype=torch.float32)).cpu() for b in _batches(images, batch_size)]
    finally:
        model.train(was_training)
    if not outs:
        raise DataError("no images to evaluate")
    return torch.cat(outs)


def extract_features(model: FeatureClassifier, images: Tensor | Iterable[Tensor], batch_size: int = 256) -> Tensor:
    """Penultimate features (N, feature_dim), float32 on the CPU, of images in [-1, 1]."""
    return _map(model.features, model, images, batch_size)


def class_predictions(model: FeatureClassifier, images: Tensor | Iterable[Tensor], batch_size: int = 256) -> Tensor:
    """Predicted class (N,) int64 of images in [-1, 1]."""
    return _map(lambda b: model(b).argmax(1), model, images, batch_size)


def dataset_images(dataset: Dataset, batch_size: int = 256) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images (B, C, H, W), labels (B,)) batches of ``dataset`` in index order."""
    n = len(dataset)  # type: ignore[arg-type]
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        if any("label" not in it for it in items):
            raise DataError("accuracy needs a labelled data set (items with a 'label')")
        batch = default_collate([{"image": it["image"], "label": it["label"]} for it in items])
        yield batch["image"], torch.as_tensor(batch["label"]).long()


def evaluate_accuracy(model: FeatureClassifier, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on every item of a labelled ``dataset``."""
    correct = total = 0
    for x, labels in dataset_images(dataset, batch_size):
        correct += int((class_predictions(model, x, batch_size) == labels).sum())
        total += labels.numel()
    if total == 0:
        raise DataError("cannot measure accuracy on an empty data set")
    return correct / total


# --------------------------------------------------------------------------------------------
# held-out data

# built-in data sets that come with a split never trained on
HOLDOUT_SPLITS = {"builtin:digits": "builtin:digits-holdout", "builtin:fashion": "builtin:fashion-test"}


def holdout_split(dataset: Dataset, every: int = 10) -> tuple[Dataset, Dataset]:
    """(train, held out): items ``every - 1``, ``2 * every - 1``, ... are held out, never trained on.

    Both parts keep the data set's ``class_names``.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if every < 2 or n < every:
        raise DataError(f"cannot hold out every {every}th of {n} images", hint="pass a separate held-out set")
    held = [i for i in range(n) if i % every == every - 1]
    train = [i for i in range(n) if i % every != every - 1]
    parts = (Subset(dataset, train), Subset(dataset, held))
    for part in parts:
        part.class_names = list(getattr(dataset, "class_names", []) or [])  # type: ignore[attr-defined]
    return parts


# --------------------------------------------------------------------------------------------
# checkpoints


def save_classifier(model: FeatureClassifier, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save the weights with their config (kind ``classifier``), so the file rebuilds the model."""
    return save_checkpoint(path, model.state_dict(), kind="classifier", config=to_dict(model.config), extra=extra)


def load_classifier(path: str | Path) -> FeatureClassifier:
    """Rebuild a :class:`FeatureClassifier` from its checkpoint alone, in eval mode."""
    ckpt = read_checkpoint(path, expect_kind="classifier")
    try:
        cfg = validate_classifier(from_dict(ClassifierConfig, ckpt.config))
    except ConfigError as err:
        raise CheckpointError(f"{str(ckpt.path)!r}: stored config is invalid: {err}") from None
    model = FeatureClassifier(cfg)
    load_state(model, ckpt.tensors, str(ckpt.path))
    return model.eval()


__all__ = [
    "HOLDOUT_SPLITS",
    "ClassifierConfig",
    "FeatureClassifier",
    "class_predictions",
    "dataset_images",
    "evaluate_accuracy",
    "extract_features",
    "holdout_split",
    "load_classifier",
    "save_classifier",
    "validate_classifier",
]
