"""Train the ldmctl feature classifier on builtin:digits and judge generated digits with it.

FD_cls is the Fréchet distance in the feature space of the ldmctl classifier (its penultimate
layer), NOT FID: ldmctl cannot download Inception weights, and the numbers are not comparable
with published FIDs. Every figure here is measured against ``builtin:digits-holdout`` (tiles
450-499 of each class, never trained on, 500 images). The floor is FD_cls between 500 random
*training* digits and the holdout: real-vs-real, so samples cannot be expected to go far below
it. It varies between random draws (class balance, which writers), so ``--floor-draws`` sets are
drawn and their range shown. FD_cls is biased upwards for small sets; compare sample sets of the
same size (500, as the floor).

    python bench/fd_digits.py                         # train (--steps), save to --out, accuracy
    python bench/fd_digits.py --classifier runs/digits-classifier.safetensors --samples s.pt
    python bench/fd_digits.py --classifier ... --samples runs/ldm/samples --tile 32

``--samples`` is a ``.pt`` file holding a tensor (N, 3, H, W) in [-1, 1] (or a dict with an
``images`` entry), or a folder of images; with ``--tile S`` each image is cut into S x S tiles
laid out as ``save_grid`` writes them (a 1-px border around each tile). Results go to stdout,
human-readable, then one JSON line; training progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ldmctl.config import DataConfig
from ldmctl.data import iter_image_files, load_image, open_dataset, pil_to_tensor
from ldmctl.errors import DataError, LdmctlError
from ldmctl.eval.classifier import (
    ClassifierConfig,
    FeatureClassifier,
    class_predictions,
    dataset_images,
    evaluate_accuracy,
    extract_features,
    load_classifier,
    save_classifier,
)
from ldmctl.eval.frechet import frechet_distance_features
from ldmctl.train.classifier import train_classifier
from ldmctl.train.loop import Callbacks

DEFAULT_STEPS = 600  # about 2 min at one thread on a busy 2-core machine (0.2 s/step, batch 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="init, data order, augmentation, reference set")
    p.add_argument("--width", type=int, default=ClassifierConfig.width, help="first-stage channels")
    p.add_argument("--feature-dim", type=int, default=ClassifierConfig.feature_dim)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/digits-classifier.safetensors"),
        help="where to save the trained classifier",
    )
    p.add_argument("--classifier", type=Path, help="reuse this trained classifier (no training)")
    p.add_argument("--samples", type=Path, help="a .pt tensor (N,3,H,W) in [-1,1] or a folder of images")
    p.add_argument("--tile", type=int, default=0, help="cut each sample image into TILE px grid cells")
    p.add_argument("--reference", type=int, default=500, help="training images for the FD_cls floor")
    p.add_argument(
        "--floor-draws",
        type=int,
        default=5,
        help="random training sets for the floor; the first is reported, all are listed",
    )
    # one thread: these small convolutions ran 4x slower with two threads on a busy 2-core machine
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


def get_classifier(args: argparse.Namespace) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Load ``--classifier``, or train one on builtin:digits and save it to ``--out``."""
    if args.classifier:
        return load_classifier(args.classifier), {"classifier": str(args.classifier), "trained": False}
    cfg = ClassifierConfig(size=32, width=args.width, feature_dim=args.feature_dim, num_classes=10)
    train = open_dataset(DataConfig(source="builtin:digits", size=cfg.size, flip=False))
    every = max(1, args.steps // 10)

    def on_step(step: int, logs: dict[str, float]) -> None:
        if step % every == 0 or step == args.steps:
            print(
                f"step {step}/{args.steps}  loss {logs['loss']:.4f}  batch acc {logs['acc']:.3f}  "
                f"{time.perf_counter() - start:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    start = time.perf_counter()
    model = train_classifier(
        train,
        cfg,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        callbacks=Callbacks(on_step=on_step),
    )
    seconds = time.perf_counter() - start
    info = {
        "classifier": str(args.out),
        "trained": True,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(model, args.out, extra={"data": "builtin:digits", **info})
    print(f"trained {args.steps} steps in {seconds:.0f}s; saved {args.out}")
    return model, info


def cut_grid(x: Tensor, tile: int) -> Tensor:
    """Cut a (3, H, W) grid written by ``save_grid`` (1-px border per cell) into (N, 3, tile, tile)."""
    cell = tile + 2
    h, w = x.shape[-2:]
    if h % cell or w % cell:
        raise DataError(
            f"a {w}x{h} px image is not a grid of {tile} px tiles with 1-px borders ({cell} px cells)",
            hint="check --tile",
        )
    cells = x.unfold(1, cell, cell).unfold(2, cell, cell)  # (3, rows, cols, cell, cell)
    cells = cells.permute(1, 2, 0, 3, 4).reshape(-1, 3, cell, cell)
    return cells[:, :, 1:-1, 1:-1]


def load_samples(path: Path, *, size: int, tile: int) -> Tensor:
    """Sample images (N, 3, size, size) in [-1, 1] from a ``.pt`` file or a folder of images."""
    if path.is_file() and path.suffix == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        x = obj.get("images") if isinstance(obj, dict) else obj
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"{str(path)!r} must hold a tensor (N, 3, H, W) or a dict with 'images'")
        x = x.float().expand(-1, 3, -1, -1)
        if x.min() >= 0:
            print(f"warning: {path} has no negative values; samples must be in [-1, 1], not [0, 1]", file=sys.stderr)
        images = list(x)
    else:
        files = iter_image_files(path)
        if not files:
            raise DataError(f"no images in {str(path)!r}")
        images = [pil_to_tensor(load_image(f)) for f in files]
    if tile > 0:
        images = [t for img in images for t in cut_grid(img, tile)]
    out = [
        img
        if img.shape[-2:] == (size, size)
        else F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True)[0]
        for img in images
    ]
    return torch.stack(out)


def floor_draws(model: FeatureClassifier, real: Tensor, *, n: int, draws: int, seed: int) -> list[float]:
    """FD_cls of ``draws`` sets of ``n`` random training digits vs the holdout features ``real``."""
    train = open_dataset(DataConfig(source="builtin:digits", size=model.config.size, flip=False))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(max(1, draws)):
        pick = torch.randperm(len(train), generator=g)[:n].tolist()
        ref = extract_features(model, torch.stack([train[i]["image"] for i in pick]))
        out.append(frechet_distance_features(ref, real))
    return out


def class_report(pred: Tensor, names: list[str]) -> dict[str, Any]:
    """Counts per predicted class and their entropy in bits (uniform over 10 classes: 3.32)."""
    counts = torch.bincount(pred, minlength=len(names))
    p = counts.double() / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log2()).sum())
    return {
        "class_counts": dict(zip(names, counts.tolist(), strict=True)),
        "class_entropy_bits": round(entropy, 4),
        "class_entropy_max_bits": round(math.log2(len(names)), 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, report = get_classifier(args)
    size = model.config.size
    holdout = open_dataset(DataConfig(source="builtin:digits-holdout", size=size, flip=False))
    report["holdout_accuracy"] = round(evaluate_accuracy(model, holdout), 4)
    print(f"holdout accuracy: {report['holdout_accuracy']:.4f} on {len(holdout)} builtin:digits-holdout images")

    real = extract_features(model, (x for x, _ in dataset_images(holdout)))
    floors = floor_draws(model, real, n=args.reference, draws=args.floor_draws, seed=args.seed)
    report["fd_cls_floor"] = round(floors[0], 4)
    report["fd_cls_floor_draws"] = [round(f, 4) for f in floors]
    spread = f" (over {len(floors)} draws: {min(floors):.4f} to {max(floors):.4f})" if len(floors) > 1 else ""
    print(f"FD_cls floor ({args.reference} random training digits vs holdout): {report['fd_cls_floor']:.4f}{spread}")

    if args.samples:
        x = load_samples(args.samples, size=size, tile=args.tile)
        report["samples"], report["n_samples"] = str(args.samples), int(x.shape[0])
        report["fd_cls"] = round(frechet_distance_features(extract_features(model, x), real), 4)
        report.update(class_report(class_predictions(model, x), holdout.class_names))
        print(f"FD_cls ({x.shape[0]} samples vs holdout): {report['fd_cls']:.4f}")
        print("predicted classes: " + ", ".join(f"{k} {v}" for k, v in report["class_counts"].items()))
        print(
            f"class entropy: {report['class_entropy_bits']:.3f} bits (uniform: {report['class_entropy_max_bits']:.3f})"
        )
    report["metric"] = "FD_cls: Fréchet distance in the feature space of the ldmctl classifier (not FID)"
    print(json.dumps(report, ensure_ascii=False))
    return report


if __name__ == "__main__":
    try:
        main()
    except LdmctlError as err:
        print(f"error: {err}" + (f"\nhint: {err.hint}" if err.hint else ""), file=sys.stderr)
        raise SystemExit(1) from None
