"""Why a builtin:shapes text-to-image model fails two-object prompts (docs/conditioning-comparison.md,
"Binding"):

    python bench/shapes_diagnose.py CKPT [--n 500] [--guidance 3] [--sweep 1,3,5,8] [--out diag.json]
    python bench/shapes_diagnose.py CKPT... --probe-only   # the relation probe alone, one line per model

Prints and (``--out``) writes:

* ``ceiling``: the checker on the prompts' real images, and on those images through the model's
  autoencoder (what any model on its latents can reach at most);
* ``failures``: for two-object prompts, how often both objects are present, the relation is wrong
  although both are, one or both objects are missing, both colours are there but a shape is wrong,
  the two objects' attributes are swapped, more than two objects are drawn;
* ``relation_probe``: the same 100 object pairs and the same noise under each relation word; the
  mean offset (px) of the first named object from the second along the relation's axis (negative
  = left of / above). A model that reads the relation moves the first object to the named side;
* ``relation_gap``: teacher-forced, no sampling. The denoising loss on 256 real two-object images
  (seed 999, not the training stream) with their own captions, and how much it rises with the
  relation word replaced by its opposite ("left of" <-> "right of", "above" <-> "below") and,
  as the control, with the first colour replaced; same t and noise, per quarter of the
  timesteps. A model that ignores the relation has a relation gap of 0 to five digits while its
  colour gap is large; the gap needs no sampling and would open before sampled images move, so
  it is the cheap signal for pilots (``--gap-only``);
* ``sweep``: two-object match at other guidance scales and at 50 sampler steps (``--sweep``).

Prompts are the captions of ``--n`` items drawn with ``--prompt-seed`` (12345: the scoring set of
bench/shapes_score.py); samples as there (DPM-Solver++, 20 steps, seed 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import torch

from ldmctl.config import DataConfig
from ldmctl.data.images import pil_to_tensor
from ldmctl.data.shapes import COLOURS, RELATIONS, SHAPE_NAMES, ShapesDataset, shapes_image
from ldmctl.diffusion.io import load_ldm
from ldmctl.diffusion.objective import Objective
from ldmctl.eval.shapes_check import check, find_objects, parse_caption, score

try:  # run as a script (python bench/shapes_diagnose.py) or imported with bench/ on the path
    from shapes_score import generate
except ImportError:  # pragma: no cover
    from bench.shapes_score import generate


def failures(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Shares of the two-object prompts in each failure class."""
    keys = ("match", "both_present", "relation_wrong", "one_missing", "both_missing", "shape_wrong", "swapped")
    counts, n = dict.fromkeys(keys + ("extra_objects",), 0), 0
    for img, prompt in zip(images, prompts, strict=True):
        wanted, relation = parse_caption(prompt)
        if relation is None:
            continue
        n += 1
        verdict, found = check(img, prompt), find_objects(img)
        have = [(f.colour, f.shape) for f in found]
        missing = [w for w in wanted if w not in have]
        (c1, s1), (c2, s2) = wanted
        counts["match"] += verdict["match"]
        counts["both_present"] += verdict["objects"]
        counts["relation_wrong"] += verdict["objects"] and not verdict["relation"]
        counts["one_missing"] += len(missing) == 1
        counts["both_missing"] += len(missing) == 2
        counts["shape_wrong"] += bool(missing) and all(c in [f.colour for f in found] for c, _ in wanted)
        counts["swapped"] += bool(missing) and s1 != s2 and (c1, s2) in have and (c2, s1) in have
        counts["extra_objects"] += len(found) > 2
    return {"n_two": n, **{k: round(v / max(n, 1), 4) for k, v in counts.items()}}


def relation_probe(model, *, guidance: float, pairs: int = 100, seed: int = 4242) -> dict[str, dict]:
    """Mean offset of the first named object from the second, per relation word, same noise for all."""
    rng, objects = random.Random(seed), []
    while len(objects) < pairs:
        a = (rng.choice(list(COLOURS)), rng.choice(SHAPE_NAMES))
        b = (rng.choice(list(COLOURS)), rng.choice(SHAPE_NAMES))
        if a[0] != b[0]:  # distinct colours: each object is found by its colour alone
            objects.append((a, b))
    out = {}
    for relation in RELATIONS:
        prompts = [f"a {a[0]} {a[1]} {relation} a {b[0]} {b[1]}" for a, b in objects]
        images = generate(model, prompts, guidance=guidance, steps=20, seed=0)
        offsets = []
        for img, (a, b) in zip(images, objects, strict=True):
            found = find_objects(img)
            fa = next((f for f in found if f.colour == a[0]), None)
            fb = next((f for f in found if f.colour == b[0]), None)
            if fa and fb:
                horizontal = relation in ("to the left of", "to the right of")
                offsets.append(fa.cx - fb.cx if horizontal else fa.cy - fb.cy)
        mean = sum(offsets) / len(offsets) if offsets else float("nan")
        out[relation] = {"mean_offset_px": round(mean, 2), "pairs_with_both_colours": len(offsets)}
    return out


OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def relation_gap(
    model, *, n: int = 256, seed: int = 999, bands: tuple[int, ...] = (), unweighted: bool = False
) -> dict[str, dict[str, float]]:
    """Per quarter of T (or per band between the timesteps ``bands``): the loss with the true
    caption, and how much higher it is with the relation word replaced by its opposite, and (the
    control) with the first colour replaced. ``unweighted``: plain squared error of the model's
    target, without the min-SNR weights (which make the high-noise bands nearly vanish)."""
    images, captions, i = [], {"own": [], "relation": [], "colour": []}, 0
    while len(images) < n:
        img, caption, objects = shapes_image(seed, 0, i, 32)
        i += 1
        if len(objects) == 2:
            relation, colour = next(r for r in RELATIONS if f" {r} " in caption), objects[0][0]
            images.append(pil_to_tensor(img))
            captions["own"].append(caption)
            captions["relation"].append(caption.replace(f" {relation} ", f" {OPPOSITE[relation]} "))
            captions["colour"].append(caption.replace(colour, "blue" if colour == "red" else "red", 1))
    z0, g, steps, out = (
        model.encode(torch.stack(images)),
        torch.Generator().manual_seed(0),
        model.schedule.num_timesteps,
        {},
    )
    objective = model.objective
    if unweighted:
        objective = Objective(dataclasses.replace(objective.cfg, min_snr_gamma=0.0, vlb_weight=0.0), objective.schedule)
    edges = list(bands) or [q * steps // 4 for q in range(5)]
    for lo, hi in zip(edges, edges[1:], strict=False):
        t = torch.randint(lo, hi, (n,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        loss = {}
        for name, caps in captions.items():
            cond = model.cond({"caption": caps})
            loss[name] = objective(lambda z_t, tt, c=cond: model.unet(z_t, tt, c), z0, t=t, noise=noise)[0].item()
        out[f"t {lo}-{hi - 1}"] = {
            "loss": round(loss["own"], 6),
            "relation_gap": round(loss["relation"] - loss["own"], 6),
            "colour_gap": round(loss["colour"] - loss["own"], 6),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--sweep", default="", help="comma-separated guidance scales to score too (and 50 steps)")
    ap.add_argument("--prompt-seed", type=int, default=12345)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--probe-only", action="store_true", help="only the relation probe and gap (several CKPTs allowed)")
    ap.add_argument("--gap-only", action="store_true", help="only the teacher-forced gaps (several CKPTs allowed)")
    ap.add_argument(
        "--bands", default="", help="timestep band edges of the gaps, e.g. 0,500,900,1000 (default quarters)"
    )
    ap.add_argument("--unweighted", action="store_true", help="gaps of the plain error, without min-SNR weights")
    args, more = ap.parse_known_args()
    if args.probe_only or args.gap_only:
        for ckpt in [args.ckpt, *map(Path, more)]:
            with torch.no_grad():
                model = load_ldm(ckpt).eval()
                bands = tuple(int(b) for b in args.bands.split(",") if b)
                gap = relation_gap(model, bands=bands, unweighted=args.unweighted)
                if args.probe_only:
                    probe = relation_probe(model, guidance=args.guidance)
                    print(ckpt, json.dumps({k: v["mean_offset_px"] for k, v in probe.items()}), flush=True)
            print(ckpt, "gaps", json.dumps(gap), flush=True)
        return
    if more:
        ap.error(f"unrecognised arguments: {' '.join(more)}")
    ds = ShapesDataset(DataConfig(source="builtin:shapes", size=32), seed=args.prompt_seed, length=args.n)
    items = [ds[i] for i in range(args.n)]
    prompts, real = [it["caption"] for it in items], torch.stack([it["image"] for it in items])
    model = load_ldm(args.ckpt).eval()
    record: dict = {"checkpoint": str(args.ckpt), "n": args.n, "prompt_seed": args.prompt_seed}
    with torch.no_grad():
        record["ceiling"] = {
            "real": score(real, prompts),
            "autoencoder": score(model.decode(model.encode(real)), prompts),
        }
        images = generate(model, prompts, guidance=args.guidance, steps=20, seed=0)
        record["failures"] = failures(images, prompts)
        record["relation_probe"] = relation_probe(model, guidance=args.guidance)
        record["relation_gap"] = relation_gap(model)
        sweep = {}
        for g in [float(s) for s in args.sweep.split(",") if s]:
            sweep[f"guidance {g:g}"] = score(generate(model, prompts, guidance=g, steps=20, seed=0), prompts)
        if args.sweep:
            x = generate(model, prompts, guidance=args.guidance, steps=50, seed=0)
            sweep[f"guidance {args.guidance:g}, 50 steps"] = score(x, prompts)
        record["sweep"] = {k: v["two_object_match"] for k, v in sweep.items()}
    print(json.dumps(record, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
