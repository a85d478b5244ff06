"""Class-conditional Fashion-MNIST LDM: accuracy of a classifier (trained on the training split) on
generated samples, at guidance 1 and 3 (``--guidance``), and the Fréchet distance between the samples and 2,000
real test images in that classifier's features (FD_cls; lower is better).

    python bench/fashion_guidance.py --ldm runs/fashion-ldm/ldm.safetensors [--n 500] [--classifier PATH]
        [--classifier-steps 600] [--guidance 1,3] [--out result.json]

The classifier is trained (``--classifier-steps`` steps of batch 64) unless ``--classifier`` exists,
and saved there.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from ldmctl.config import DataConfig
from ldmctl.data import open_dataset
from ldmctl.diffusion.io import load_ldm
from ldmctl.eval.classifier import (
    ClassifierConfig,
    class_predictions,
    dataset_images,
    evaluate_accuracy,
    extract_features,
    load_classifier,
    save_classifier,
)
from ldmctl.eval.frechet import frechet_distance_features
from ldmctl.samplers import dpmpp
from ldmctl.samplers.guidance import cfg_model_fn
from ldmctl.train.classifier import train_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ldm", type=Path, required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--classifier", type=Path, default=Path("runs/fashion-classifier.safetensors"))
    ap.add_argument("--classifier-steps", type=int, default=600)
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--guidance", default="1,3", help="comma-separated guidance scales")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if args.classifier.is_file():
        clf = load_classifier(args.classifier)
    else:
        train = open_dataset(DataConfig(source="builtin:fashion", size=32, flip=False))
        clf = train_classifier(train, ClassifierConfig(), steps=args.classifier_steps)
        save_classifier(clf, args.classifier)
    test = open_dataset(DataConfig(source="builtin:fashion-test", size=32))
    sub = torch.utils.data.Subset(test, range(2000))
    sub.class_names = test.class_names
    acc_real = evaluate_accuracy(clf, sub)
    real_features = extract_features(clf, (x for x, _ in dataset_images(sub)))
    model = load_ldm(args.ldm)
    labels = torch.arange(args.n) % 10
    out = {
        "ldm": str(args.ldm),
        "classifier": str(args.classifier),
        "classifier_test_accuracy_2000": round(acc_real, 4),
    }
    out["n"] = args.n
    for guidance in [float(g) for g in args.guidance.split(",")]:
        g = torch.Generator().manual_seed(0)
        images = []
        for start in range(0, args.n, 100):
            lab = labels[start : start + 100]
            cond = model.cond({"label": lab})
            fn = cfg_model_fn(model.unet, cond, model.conditioners.null(len(lab), like=cond), guidance)
            images.append(model.decode(model.sample_latents(dpmpp, len(lab), steps=20, generator=g, model_fn=fn)))
        samples = torch.cat(images)
        pred = class_predictions(clf, samples)
        out[f"accuracy_guidance_{guidance:g}"] = round(float((pred == labels).float().mean()), 4)
        out[f"fd_cls_guidance_{guidance:g}"] = round(
            frechet_distance_features(extract_features(clf, samples), real_features), 3
        )
        print(
            f"guidance {guidance:g}: classifier accuracy on {args.n} samples {out[f'accuracy_guidance_{guidance:g}']:.3f}, "
            f"FD_cls {out[f'fd_cls_guidance_{guidance:g}']:.3f}",
            flush=True,
        )
    print(f"classifier accuracy on 2000 real test images: {acc_real:.3f}")
    print(json.dumps(out))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
