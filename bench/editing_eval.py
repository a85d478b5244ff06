"""Editing quality on builtin:shapes (docs/editing.md): inpainting one object of a two-object image, and img2img.

Images are two-object builtin:shapes items generated with ``--data-seed`` (not the training stream's
seed 0). For each one, one object is erased (painted white) inside its box grown by 2 px, and the
box is the mask. Each model then repaints it with the full caption, and the shapes checker judges
the whole image against the caption. Beside the match rate: the pixel error outside the mask
(mean absolute difference in 8-bit levels, and the share of pixels that differ at all) against the
original. Baselines: the original image (the checker's ceiling) and the erased image (its floor).

img2img: the original image at strengths 0.25 / 0.5 / 0.75 with its own caption, and with the caption
of another item (an edit): PSNR to the input and the checker's match rate for the prompt given.

    python bench/editing_eval.py --inpaint-model runs/inpaint/ldm.safetensors --n 200 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldmctl.data.images import pil_to_tensor
from ldmctl.data.shapes import shapes_image
from ldmctl.diffusion.io import load_ldm
from ldmctl.editing import prepare_edit
from ldmctl.eval.shapes_check import check, parse_caption
from ldmctl.models import shipped_model
from ldmctl.samplers import get_sampler
from ldmctl.sampling import generate

SIZE = 32


def two_object_items(n: int, seed: int) -> list[tuple[Image.Image, str, list, float]]:
    """The first ``n`` two-object items of epoch 0 of ``seed``: (image, caption, objects, radius)."""
    items, index = [], 0
    while len(items) < n:
        image, caption, objects = shapes_image(seed, 0, index, SIZE)
        radius = SIZE * random.Random(f"shapes/{seed}/0/{index}").uniform(0.11, 0.16)  # the generator's first draw
        if parse_caption(caption)[1] is not None:
            items.append((image, caption, objects, radius))
        index += 1
    return items


def object_mask(obj: tuple, radius: float, grow: float = 2.0) -> np.ndarray:
    """(H, W) bool: the object's box grown by ``grow`` px."""
    _, _, cx, cy = obj
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    r = radius + grow
    return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)


def to_u8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def run_edits(
    model, inits: list[Path], captions: list[str], *, masks: list[Path] | None, strength: float | None, args
) -> torch.Tensor:
    """One batch: the edits of ``inits`` (with ``masks``), each with its caption; (B, 3, H, W) in [-1, 1]."""
    edits = [
        prepare_edit(model, init, mask=None if masks is None else masks[k], strength=strength)
        for k, init in enumerate(inits)
    ]
    first = edits[0]
    edit = dataclasses.replace(
        first,
        image=torch.stack([e.image for e in edits]),
        mask=None if first.mask is None else torch.stack([e.mask for e in edits]),
        inputs={},
    )
    conditions: dict = {"caption": list(captions)}
    for key in first.inputs:  # a model whose task reads the mask itself (train-ldm --task inpaint)
        conditions[key] = torch.stack([e.inputs[key][0] for e in edits])
    ((images, _),) = generate(
        model,
        get_sampler("dpmpp"),
        len(inits),
        steps=args.steps,
        seed=args.seed,
        conditions=conditions,
        guidance=args.guidance,
        batch_size=len(inits),
        edit=edit,
    )
    return images


def in_batches(n: int, size: int = 50) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def inpaint_scores(model, items, folder: Path, args) -> dict:
    rng = random.Random(args.data_seed)
    masks = [object_mask(objects[rng.randrange(2)], radius) for _, _, objects, radius in items]
    inits, mask_files = [], []
    for k, (image, _, _, _) in enumerate(items):
        erased = np.asarray(image).copy()
        erased[masks[k]] = 255
        inits.append(folder / f"erased_{k}.png")
        mask_files.append(folder / f"mask_{k}.png")
        Image.fromarray(erased).save(inits[-1])
        Image.fromarray((masks[k] * 255).astype(np.uint8)).save(mask_files[-1])
    started = time.process_time()
    outs = torch.cat(
        [
            run_edits(
                model,
                [inits[i] for i in b],
                [items[i][1] for i in b],
                masks=[mask_files[i] for i in b],
                strength=None,
                args=args,
            )
            for b in in_batches(len(items))
        ]
    )
    seconds = time.process_time() - started
    f = model.autoencoder.config.downsample_factor
    matches, mae, changed, far_changed = [], [], [], []
    for k, out in enumerate(outs):
        matches.append(check(out, items[k][1])["match"])
        diff = np.abs(to_u8(out).astype(int) - np.asarray(items[k][0]).astype(int)).max(axis=-1)
        outside, far = ~masks[k], ~grow(masks[k], f)
        mae.append(float(diff[outside].mean()))
        changed.append(float((diff[outside] > 0).mean()))
        far_changed.append(float((diff[far] > 0).mean()))
    return {
        "match": float(np.mean(matches)),
        "outside_mae_8bit": float(np.mean(mae)),
        "outside_pixels_changed": float(np.mean(changed)),
        "pixels_changed_beyond_f_px": float(np.mean(far_changed)),
        "cpu_s_per_image": seconds / len(items),
    }


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` dilated by ``px`` pixels (Chebyshev distance)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return torch.nn.functional.max_pool2d(t, 2 * px + 1, stride=1, padding=px)[0, 0].numpy() > 0


def baselines(items, args) -> dict:
    rng = random.Random(args.data_seed)
    orig, erased_match = [], []
    for image, caption, objects, radius in items:
        m = object_mask(objects[rng.randrange(2)], radius)
        erased = np.asarray(image).copy()
        erased[m] = 255
        orig.append(check(pil_to_tensor(image), caption)["match"])
        erased_match.append(check(pil_to_tensor(Image.fromarray(erased)), caption)["match"])
    return {"original_match": float(np.mean(orig)), "erased_match": float(np.mean(erased_match))}


def img2img_scores(model, items, folder: Path, args) -> dict:
    out, chosen = {}, items[: args.n_img2img]
    inits = []
    for k, (image, _, _, _) in enumerate(chosen):
        inits.append(folder / f"orig_{k}.png")
        image.save(inits[-1])
    for strength in (0.25, 0.5, 0.75):
        for which in ("own", "other"):
            prompts = [
                c if which == "own" else chosen[(k + 1) % len(chosen)][1] for k, (_, c, _, _) in enumerate(chosen)
            ]
            results = torch.cat(
                [
                    run_edits(
                        model, [inits[i] for i in b], [prompts[i] for i in b], masks=None, strength=strength, args=args
                    )
                    for b in in_batches(len(chosen))
                ]
            )
            matches, psnrs = [], []
            for k, result in enumerate(results):
                matches.append(check(result, prompts[k])["match"])
                mse = float(((to_u8(result).astype(float) - np.asarray(chosen[k][0]).astype(float)) ** 2).mean())
                psnrs.append(10 * np.log10(255**2 / max(mse, 1e-10)))
            out[f"strength_{strength}_{which}_prompt"] = {
                "match": float(np.mean(matches)),
                "psnr_to_input": float(np.mean(psnrs)),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="text-to-image checkpoint (default: the shipped shapes model)")
    ap.add_argument("--inpaint-model", default=None, help="a train-ldm --task inpaint checkpoint")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-img2img", type=int, default=100)
    ap.add_argument("--data-seed", type=int, default=20261207)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    items = two_object_items(args.n, args.data_seed)
    report: dict = {
        "n": args.n,
        "data_seed": args.data_seed,
        "sampler": "dpmpp",
        "steps": args.steps,
        "guidance": args.guidance,
        "baselines": baselines(items, args),
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = load_ldm(args.model or shipped_model("shapes"))
        report["latent_blending"] = inpaint_scores(base, items, Path(tmp), args)
        print(json.dumps(report, indent=2), flush=True)
        if args.inpaint_model:
            report["inpainting_model"] = inpaint_scores(load_ldm(args.inpaint_model), items, Path(tmp), args)
            print(json.dumps(report["inpainting_model"], indent=2), flush=True)
        report["img2img"] = img2img_scores(base, items, Path(tmp), args)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
