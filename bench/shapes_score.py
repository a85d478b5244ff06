"""Score text-conditional LDMs on builtin:shapes prompts with the automatic shapes checker.

    python bench/shapes_score.py CKPT [CKPT ...] [--n 200] [--guidance 3] [--steps 20] [--out scores.json]
                                 [--grid-dir docs/images] [--swap-negative] [--expert LDM --expert-from 500]

Prompts are the captions of ``--n`` builtin:shapes items generated with ``--prompt-seed`` (not the
training stream's seed); each prompt gets one DPM-Solver++ sample (seed ``--seed``). The checker
(ldmctl/eval/shapes_check.py) finds each named object by colour and shape and checks the named
relation; it reports the match rate overall, for two-object prompts, for their objects alone
(both present, relation ignored) and for one-object prompts. With ``--grid-dir``, a grid of the
first 8 two-object prompts x 4 samples per model is written there as shapes-<conditioner>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ldmctl.cli._console import save_grid
from ldmctl.config import DataConfig
from ldmctl.data.shapes import ShapesDataset
from ldmctl.diffusion.io import load_ldm
from ldmctl.eval.shapes_check import parse_caption, score
from ldmctl.samplers import dpmpp
from ldmctl.samplers.guidance import cfg_model_fn
from ldmctl.sampling import switched

SWAP = {"left": "right", "right": "left", "above": "below", "below": "above"}


def swap_relation(caption: str) -> str:
    """The caption with its relation word replaced by the opposite one (unchanged without one)."""
    return " ".join(SWAP.get(w, w) for w in caption.split(" "))


def _guided(model, chunk: list[str], guidance: float, swap_negative: bool):
    cond = model.cond({"caption": chunk})
    negative = {"caption": [swap_relation(p) for p in chunk]} if swap_negative else None
    return cfg_model_fn(model.unet, cond, model.conditioners.null(len(chunk), like=cond, negative=negative), guidance)


def generate(
    model,
    prompts: list[str],
    *,
    guidance: float,
    steps: int,
    seed: int,
    batch: int = 100,
    swap_negative: bool = False,
    expert: tuple | None = None,
) -> torch.Tensor:
    """One DPM-Solver++ sample per prompt; ``swap_negative``: the negative prompt of each is itself
    with the opposite relation word (guidance then pushes away from the mirrored layout);
    ``expert = (LDM, t)``: that model denoises the timesteps >= t (ldmctl sample --expert)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        fn = _guided(model, chunk, guidance, swap_negative)
        if expert is not None:
            fn = switched(_guided(expert[0], chunk, guidance, swap_negative), fn, expert[1])
        out.append(model.decode(model.sample_latents(dpmpp, len(chunk), steps=steps, generator=g, model_fn=fn)))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-seed", type=int, default=12345)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--grid-dir", type=Path)
    ap.add_argument("--expert", type=Path, help="high-noise expert LDM for every CKPT (ldmctl sample --expert)")
    ap.add_argument("--expert-from", type=int, default=500, help="first timestep the expert denoises")
    ap.add_argument(
        "--swap-negative", action="store_true", help="negative prompt: the prompt with the opposite relation"
    )
    args = ap.parse_args()
    ds = ShapesDataset(DataConfig(source="builtin:shapes", size=32), seed=args.prompt_seed, length=args.n)
    prompts = [ds[i]["caption"] for i in range(args.n)]
    two = [p for p in prompts if parse_caption(p)[1] is not None][:8]
    results = []
    expert = None if args.expert is None else (load_ldm(args.expert), args.expert_from)
    for ckpt in args.ckpts:
        model = load_ldm(ckpt)
        name = "+".join(s.name for s in model.config.conditioners)
        started = time.time()
        images = generate(
            model,
            prompts,
            guidance=args.guidance,
            steps=args.steps,
            seed=args.seed,
            swap_negative=args.swap_negative,
            expert=expert,
        )
        res = {
            "checkpoint": str(ckpt),
            "expert": None if expert is None else f"{args.expert} from t {args.expert_from}",
            "conditioner": name,
            **score(images, prompts),
            "sampling_s": round(time.time() - started, 1),
        }
        results.append(res)
        print(
            f"{name:<12} match {res['match']:.3f}  two-object {res['two_object_match']:.3f} "
            f"(objects present {res['two_object_objects']:.3f})  one-object {res['one_object_match']:.3f}",
            flush=True,
        )
        if args.grid_dir is not None:
            grid_prompts = [p for p in two for _ in range(4)]
            imgs = generate(
                model, grid_prompts, guidance=args.guidance, steps=args.steps, seed=args.seed, expert=expert
            )
            rows = {p: imgs[i * 4 : (i + 1) * 4] for i, p in enumerate(two)}
            save_grid(rows, args.grid_dir / f"shapes-{name}.png", max_cols=4)
    record = {
        "guidance": args.guidance,
        "steps": args.steps,
        "n": args.n,
        "prompt_seed": args.prompt_seed,
        "swap_negative": args.swap_negative,
        "grid_prompts": two,
        "results": results,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
