"""Train the feature classifier behind FD_cls (:mod:`ldmctl.eval.classifier`) with the training engine.

AdamW with a short linear warm-up (5% of the steps) and cosine decay to 0, on random translations
by up to ``max_shift`` px (no flips: a mirrored digit is another glyph). The run has no folder:
``ldmctl train-classifier`` writes the one checkpoint at the end (:func:`~ldmctl.eval.classifier.save_classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ldmctl.device import module_device
from ldmctl.errors import ConfigError, DataError
from ldmctl.eval.classifier import ClassifierConfig, FeatureClassifier
from ldmctl.train import engine
from ldmctl.train.loop import Callbacks, autocast, batch_stream, lr_at, set_lr


def random_translate(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by up to ``max_shift`` px in x and y: replicate-pad, then crop at random."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def _check_labels(labels: Tensor, num_classes: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ConfigError(
            f"classifier.num_classes is {num_classes}, but the data set has label {int(bad[0])}",
            hint="set num_classes to the number of classes in the data set",
        )


@dataclass
class ClassifierRun:
    """The live objects of a classifier run: the engine's :class:`~ldmctl.train.engine.Stepper`."""

    model: FeatureClassifier
    opt: torch.optim.Optimizer
    augment: torch.Generator  # the translations' stream
    steps: int
    lr: float
    max_shift: int
    step: int = 0
    precision: str = "fp32"  # autocast of the forward pass: fp32 or bf16

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One AdamW step of cross-entropy on a translated batch; logs its loss, accuracy and lr."""
        if "label" not in batch:
            raise DataError("the classifier needs a labelled data set (items with a 'label')")
        x, labels = batch["image"].float(), torch.as_tensor(batch["label"]).long()
        _check_labels(labels, self.model.config.num_classes)
        set_lr(
            self.opt,
            lr_at(self.step, base=self.lr, warmup=self.steps // 20, total=self.steps, schedule="cosine", min_ratio=0.0),
        )
        device = module_device(self.model)  # translations are drawn on the CPU, then moved
        x, labels = random_translate(x, self.max_shift, self.augment).to(device), labels.to(device)
        with autocast(self.precision, device):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        acc = (logits.argmax(1) == labels).float().mean().item()
        return {"loss": loss.item(), "acc": acc, "lr": self.opt.param_groups[0]["lr"]}

    def preview(self) -> None:
        return None

    def summary_extra(self) -> dict[str, Any]:
        return {}


def train_classifier(
    dataset: Dataset,
    cfg: ClassifierConfig,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    callbacks: Callbacks | None = None,
    max_shift: int = 2,
    weight_decay: float = 0.05,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on the items ("image", "label") of ``dataset``.

    The result depends only on ``seed``: the global RNG (init, dropout) is seeded inside a forked
    RNG state, so the caller's is untouched. Reports ``loss``, ``acc`` (batch), ``lr`` and
    ``steps_per_s`` to ``callbacks.on_step``. It trains on ``device`` (default: the CPU) under the
    autocast of ``precision``, and returns the model in eval mode, on the CPU.
    """
    if steps <= 0 or batch_size <= 0:
        raise ConfigError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("cannot train a classifier on an empty data set")
    n_names = len(getattr(dataset, "class_names", None) or [])
    if n_names > cfg.num_classes:
        raise ConfigError(
            f"classifier.num_classes is {cfg.num_classes}, but the data set has {n_names} classes",
            hint=f"set num_classes to {n_names}",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureClassifier(cfg).train().to(device or "cpu")  # initialised on the CPU on every device
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        run = ClassifierRun(model, opt, torch.Generator().manual_seed(seed + 1), steps, lr, max_shift, 0, precision)
        engine.run(
            run,
            batch_stream(dataset, batch_size, seed=seed),
            engine.Plan(max_steps=steps),
            out=None,
            callbacks=callbacks,
        )
    return model.eval().cpu()


__all__ = ["ClassifierRun", "random_translate", "train_classifier"]
