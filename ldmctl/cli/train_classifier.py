"""``ldmctl train-classifier``: the offline feature extractor behind FD_cls (never FID)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ldmctl.cli._console import console, format_logs, step_progress
from ldmctl.cli._options import DeviceOpt, runtime
from ldmctl.cli._vocab import AEPrecision
from ldmctl.config import DataConfig
from ldmctl.data import open_dataset
from ldmctl.errors import DataError
from ldmctl.eval.classifier import HOLDOUT_SPLITS, ClassifierConfig, evaluate_accuracy, holdout_split, save_classifier
from ldmctl.eval.report import write_json
from ldmctl.files import check_writable
from ldmctl.train.classifier import train_classifier
from ldmctl.train.loop import Callbacks

DataOpt = Annotated[
    str,
    typer.Option(help="Labelled images: builtin:digits, builtin:fashion or a folder with one sub-folder per class."),
]
OutFileOpt = Annotated[
    Path, typer.Option("--out-file", "-o", "--out", help="Classifier checkpoint to write (.safetensors).")
]
StepsOpt = Annotated[int, typer.Option(help="Training steps (AdamW, cosine decay).")]
BatchSizeOpt = Annotated[int, typer.Option(help="Images per step.")]
LROpt = Annotated[float, typer.Option(help="Peak learning rate.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the initialisation, data order and augmentation.")]
SizeOpt = Annotated[int, typer.Option(help="Input side in px (a multiple of 8); other sizes are resized to it.")]
WidthOpt = Annotated[int, typer.Option(help="Channels of the first stage (stages: 1x, 2x, 4x).")]
FeatureDimOpt = Annotated[int, typer.Option(help="Width of the feature layer: the FD_cls feature space.")]
HoldoutOpt = Annotated[
    str | None,
    typer.Option(
        help="Held-out images for the accuracy (default: builtin:digits-holdout / builtin:fashion-test for those "
        "sets; otherwise every 10th image, not trained on)."
    ),
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the held-out accuracy and the settings as JSON here.")
]
ClassifierPrecisionOpt = Annotated[
    AEPrecision, typer.Option(help="fp32, or autocast to bf16 (CPU or GPU); no fp16: there is no gradient scaler.")
]


def _open(source: str, size: int):
    return open_dataset(DataConfig(source=source, size=size, crop="center", resize=True, flip=False))


def _class_names(dataset: Any) -> list[str]:
    return list(getattr(dataset, "class_names", []) or [])


def _labelled(data: str, size: int) -> tuple[Any, list[str]]:
    """The training set and its class names; a DataError unless it has at least two classes."""
    train = _open(data, size)
    names = _class_names(train)
    if len(names) < 2:
        raise DataError(
            f"{data!r} has {len(names)} classes; the classifier needs labelled images of at least 2",
            hint="use builtin:digits, builtin:fashion or a folder with one sub-folder per class",
        )
    return train, names


def _held_out(train: Any, data: str, holdout: str | None, size: int) -> tuple[Any, Any, str]:
    """The images to train on, the held-out images and what they are: ``holdout`` (by default the
    data set's own held-out split), with the same classes as ``data``, else every 10th image."""
    holdout = holdout or HOLDOUT_SPLITS.get(data)
    if holdout is None:
        return *holdout_split(train), f"every 10th image of {data}"
    held = _open(holdout, size)
    names, held_names = _class_names(train), _class_names(held)
    if held_names != names:
        raise DataError(
            f"the held-out set {holdout!r} has classes {held_names[:5]}, not those of {data!r} ({names[:5]})",
            hint="give a held-out folder with the same class sub-folders",
        )
    return train, held, holdout


def command(
    data: DataOpt,
    out: OutFileOpt,
    steps: StepsOpt = 600,
    batch_size: BatchSizeOpt = 64,
    lr: LROpt = 2e-3,
    seed: SeedOpt = 0,
    size: SizeOpt = ClassifierConfig.size,
    width: WidthOpt = ClassifierConfig.width,
    feature_dim: FeatureDimOpt = ClassifierConfig.feature_dim,
    holdout: HoldoutOpt = None,
    json_out: JsonOpt = None,
    device: DeviceOpt = "auto",
    precision: ClassifierPrecisionOpt = "fp32",
) -> None:
    """Train the small classifier whose features give the offline FD_cls and class accuracy of `eval`."""
    for target in [out] + ([json_out] if json_out else []):
        check_writable(target)  # before training, not after it
    dev = runtime(device, precision)
    train, names = _labelled(data, size)
    train, held, holdout = _held_out(train, data, holdout, size)
    cfg = ClassifierConfig(size=size, width=width, feature_dim=feature_dim, num_classes=len(names))
    with step_progress(steps, description="train-classifier") as (progress, task):

        def on_step(step: int, logs: dict[str, float]) -> None:
            progress.update(task, completed=step, stats=format_logs(logs, ("loss", "acc")))

        run = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "device": dev, "precision": precision}
        model = train_classifier(train, cfg, callbacks=Callbacks(on_step=on_step), **run)
    accuracy = evaluate_accuracy(model, held)
    info = {
        "data": data,
        "holdout": holdout,
        "holdout_accuracy": accuracy,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": str(dev),
        "precision": precision,
        "class_names": names,
    }
    save_classifier(model, out, extra=info)
    console.print(f"held-out accuracy {accuracy:.4f} on {len(held)} images ({holdout})", highlight=False)
    console.print(str(out), highlight=False)
    if json_out is not None:
        write_json({"checkpoint": str(out), "holdout_images": len(held), **info}, json_out)
        console.print(str(json_out), highlight=False)
