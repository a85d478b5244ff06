"""A new concept for the shipped ``builtin:shapes`` model, LoRA beside a full fine-tune (docs/lora.md).

    python bench/lora_concept.py data DIR [--concept bar|ring] [--n 50] [--seed 0]   # the captioned folder only
    python bench/lora_concept.py run [--concept bar] [--steps 800] [--batch-size 4] [--n-images 50]
                                     [--work runs/lora_concept] [--out bench/results/lora_concept.json]
    python bench/lora_concept.py curve RUN_DIR [--concept bar] [--n-concept 100] [--n-base 0]
                                     # concept rate at every saved step of a train-lora run

The shipped model draws circles, squares and triangles in six colours. Two shapes it never saw:

* ``bar``: a horizontal bar about 2.9 times as long as it is thick (the worked case);
* ``ring``: a disc with a hole (0.16-0.19 x the image side, hole half the radius, larger than the
  base shapes so that the 32 px autoencoder keeps the hole at all: it does so 63% of the time).

Its pruned vocabulary has no row for either word: "bar" and "ring" read as ``[UNK]``, a token no
training caption contained, so the adapters bind the concept to that token (any other unknown word
reads the same).

``data`` writes DIR/metadata.jsonl and DIR/images/NNNN.png: 30% "a red bar", 70% the concept and a
builtin shape with a relation ("a red bar to the left of a blue square", the concept first or
second). ``run`` makes that folder, then for the base model, ``ldmctl train-lora`` (its defaults;
only --max-steps, --batch-size, --seed, --size and data.flip=false given) and ``ldmctl train-ldm
--init`` (the same steps, batch, lr 1e-4, warm-up 50, clip 1, constant lr) measures:

* concept: the share of ``--n-concept`` concept prompts (a fresh seed, not the data's) whose sample
  shows the concept in the named colour (ldmctl/eval/shapes_check.py with ``shapes=`` widened by
  EXTRA_SHAPES), and the full-caption match (the other object and the relation too);
* base: the shapes checker's match rate on ``--n-base`` builtin:shapes prompts (prompt seed 12345,
  sample seed 0, guidance 3, 20 DPM-Solver++ steps: bench/shapes_score.py's), i.e. forgetting;
* trainable parameters, seconds per step (median of log.jsonl), peak RSS of the training process
  (``os.wait4``), and the size of the file the run writes;
* the ceiling: the checker on concept images passed through the autoencoder (encode, decode).

``flip`` is off: a mirrored "to the left of" image is mislabelled. Each training run is a child
process, one at a time; run with OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from ldmctl.config import DataConfig
from ldmctl.data.shapes import COLOURS, RELATIONS, SHAPE_NAMES, ShapesDataset, _place_pair, draw_shape
from ldmctl.eval.shapes_check import EXTRA_SHAPES, find_objects, parse_caption, score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_score import generate  # noqa: E402

CONCEPTS = EXTRA_SHAPES  # ("ring", "bar")
CONCEPT = "bar"  # the worked case; set by --concept
SHAPES = SHAPE_NAMES + EXTRA_SHAPES
RING_RADIUS = (0.16, 0.19)  # outer radius / image side
HOLE = 0.5  # hole radius / outer radius
BAR = (1.6, 0.55)  # half-length, half-thickness / r (r: 0.11-0.13 x side; base shapes: 0.11-0.16)
SIZE = 32
DATA_SEED, PROMPT_SEED, BASE_PROMPT_SEED = 0, 777, 12345
LDMCTL = [sys.executable, "-m", "ldmctl"]


def set_concept(name: str) -> None:
    global CONCEPT
    if name not in CONCEPTS:
        raise SystemExit(f"concept {name!r}: choose one of {CONCEPTS}")
    CONCEPT = name


def draw_ring(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    h = r * HOLE
    draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=(255, 255, 255))


def draw_bar(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    """A horizontal bar 2r x 1.6 long and 2r x 0.55 thick (~2.9 : 1)."""
    half_len, half_thick = r * BAR[0], r * BAR[1]
    draw.rectangle((cx - half_len, cy - half_thick, cx + half_len, cy + half_thick), fill=fill)


def concept_radius(rng: random.Random, size: int) -> float:
    """The placement radius of the concept: a ring's outer radius, a bar's half-length."""
    if CONCEPT == "ring":
        return size * rng.uniform(*RING_RADIUS)
    return size * rng.uniform(0.11, 0.13) * BAR[0]


def concept_caption(rng: random.Random) -> tuple[str, list[tuple[str, str]], str | None]:
    """A caption naming the concept once (30% alone, else with a builtin shape and a relation)."""
    colour = rng.choice(list(COLOURS))
    if rng.random() < 0.3:
        return f"a {colour} {CONCEPT}", [(colour, CONCEPT)], None
    other = (rng.choice(list(COLOURS)), rng.choice(SHAPE_NAMES))
    relation = rng.choice(RELATIONS)
    objs = [(colour, CONCEPT), other] if rng.random() < 0.5 else [other, (colour, CONCEPT)]
    return f"a {objs[0][0]} {objs[0][1]} {relation} a {objs[1][0]} {objs[1][1]}", objs, relation


def concept_image(seed: int, index: int, size: int = SIZE) -> tuple[Image.Image, str]:
    """Item ``index``: an image with the concept (ring or bar) and its caption."""
    rng = random.Random(f"{CONCEPT}s/{seed}/{index}")
    caption, objs, relation = concept_caption(rng)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    extent = concept_radius(rng, size)  # half the concept's longest side: placement keeps it inside
    if relation is None:
        centres = [(rng.uniform(extent + 1, size - extent - 1), rng.uniform(extent + 1, size - extent - 1))]
    else:
        centres = list(_place_pair(rng, size, extent, relation))
    for (colour, shape), (cx, cy) in zip(objs, centres, strict=True):
        if shape == "ring":
            draw_ring(draw, cx, cy, extent, COLOURS[colour])
        elif shape == "bar":
            draw_bar(draw, cx, cy, extent / BAR[0], COLOURS[colour])
        else:
            draw_shape(draw, shape, cx, cy, size * rng.uniform(0.11, 0.16), COLOURS[colour])
    return img, caption


def write_folder(out: Path, n: int, seed: int = DATA_SEED, captions_kind: str = "full") -> list[str]:
    """The captioned folder: out/images/NNNN.png and out/metadata.jsonl; returns the captions.
    ``captions_kind`` "short": every caption is just "a bar" (the same images; the ablation of
    docs/lora.md's caption question)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, captions = [], []
    for i in range(n):
        img, caption = concept_image(seed, i)
        if captions_kind == "short":
            caption = f"a {CONCEPT}"
        img.save(out / "images" / f"{i:04d}.png")
        rows.append(json.dumps({"file_name": f"images/{i:04d}.png", "text": caption}))
        captions.append(caption)
    (out / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return captions


def concept_prompts(n: int, seed: int = PROMPT_SEED) -> list[str]:
    rng = random.Random(f"{CONCEPT}-prompts/{seed}")
    return [concept_caption(rng)[0] for _ in range(n)]


def base_prompts(n: int) -> list[str]:
    ds = ShapesDataset(DataConfig(source="builtin:shapes", size=SIZE), seed=BASE_PROMPT_SEED, length=n)
    return [ds[i]["caption"] for i in range(n)]


def concept_scores(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """concept: the concept in the named colour is there; match: the whole caption holds;
    any_concept: the concept in any colour."""
    ring, anyconcept = [], []
    for img, prompt in zip(images, prompts, strict=True):
        found = find_objects(img, shapes=SHAPES)
        colour = next(c for c, s in parse_caption(prompt, SHAPES)[0] if s == CONCEPT)
        ring.append(any(f.shape == CONCEPT and f.colour == colour for f in found))
        anyconcept.append(any(f.shape == CONCEPT for f in found))
    full = score(images, prompts, shapes=SHAPES)
    return {
        "concept": round(sum(ring) / len(ring), 4),
        "match": round(full["match"], 4),
        "any_concept": round(sum(anyconcept) / len(anyconcept), 4),
        "n": len(prompts),
    }


def load_model(ckpt: str | Path, lora: str | Path | None = None, scale: float = 1.0) -> Any:
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.lora import load_lora

    model = load_ldm(ckpt)
    if lora is not None:
        load_lora(model, lora, scale=scale)
    return model.eval()


@torch.no_grad()
def evaluate(model: Any, n_concept: int, n_base: int) -> dict[str, Any]:
    started = time.time()
    out: dict[str, Any] = {}
    if n_concept:
        cp = concept_prompts(n_concept)
        out["concept"] = concept_scores(generate(model, cp, guidance=3.0, steps=20, seed=0), cp)
    if n_base:
        bp = base_prompts(n_base)
        res = score(generate(model, bp, guidance=3.0, steps=20, seed=0), bp)
        out["base"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    out["eval_s"] = round(time.time() - started, 1)
    return out


@torch.no_grad()
def autoencoder_ceiling(model: Any, n: int) -> dict[str, float]:
    """The checker on the training images after encode -> decode: what the latent space can carry."""
    from ldmctl.data.images import pil_to_tensor

    items = [concept_image(PROMPT_SEED + 1, i) for i in range(n)]
    x = torch.stack([pil_to_tensor(img) for img, _ in items])
    y = model.autoencoder.decode(model.autoencoder.encode(x))
    caps = [c for _, c in items]
    return {"pixels": concept_scores(x, caps), "autoencoded": concept_scores(y, caps)}


def timed_child(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; its wall time and peak resident memory (MiB, from os.wait4)."""
    started = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed: see {log}")
    return {"wall_s": round(time.time() - started, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def sec_per_step(run_dir: Path) -> float:
    rates = [json.loads(line).get("steps_per_s") for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r]
    return round(1 / statistics.median(rates[len(rates) // 5 :] or rates), 4)


def base_checkpoint() -> str:
    """The shipped model's file, relative to the working directory when inside it (for the records)."""
    from ldmctl.models import shipped_model

    path = shipped_model("shapes").resolve()
    return str(path.relative_to(Path.cwd().resolve())) if path.is_relative_to(Path.cwd().resolve()) else str(path)


def train_lora_cmd(data: Path, out: Path, steps: int, batch: int, extra: list[str] | None = None) -> list[str]:
    return [
        *LDMCTL, "train-lora", base_checkpoint(), "--data", str(data), "--out-dir", str(out),
        "--max-steps", str(steps), "--batch-size", str(batch), "--seed", "0", "--device", "cpu",
        "--size", str(SIZE), "--sample-every", str(steps), "--save-every", str(steps), "--set", "data.flip=false",
        *(extra or []),
    ]  # fmt: skip


def train_full_cmd(data: Path, out: Path, steps: int, batch: int) -> list[str]:
    return [
        *LDMCTL, "train-ldm", "--init", base_checkpoint(), "--data", str(data), "--out-dir", str(out),
        "--size", str(SIZE), "--max-steps", str(steps), "--batch-size", str(batch), "--lr", "1e-4", "--seed", "0",
        "--device", "cpu", "--sample-every", str(steps), "--save-every", str(steps),
        "--set", "data.flip=false", "--set", "train.warmup_steps=50", "--set", "train.grad_clip=1.0",
        "--set", "train.lr_schedule=constant",
    ]  # fmt: skip


def count_full_trainable(ckpt: str) -> int:
    model = load_model(ckpt)
    return sum(p.numel() for p in model.unet.parameters()) + sum(
        p.numel() for p in model.conditioners.parameters() if p.requires_grad
    )


def cmd_run(args: argparse.Namespace) -> None:
    work: Path = args.work
    data = work / f"{CONCEPT}{args.n_images}{'' if args.captions == 'full' else '_' + args.captions}"
    write_folder(data, args.n_images, captions_kind=args.captions)
    base = base_checkpoint()
    record: dict[str, Any] = {
        "concept": CONCEPT,
        "images": args.n_images,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "machine": args.machine,
        "torch_threads": torch.get_num_threads(),
        "commands": {},
        "runs": {},
    }
    model = load_model(base)
    record["autoencoder_ceiling"] = autoencoder_ceiling(model, 100)
    if not args.skip_base:
        print("base ...", flush=True)
        record["runs"]["base"] = {"trainable_parameters": 0, **evaluate(model, args.n_concept, args.n_base)}
        print(json.dumps(record["runs"]["base"]), flush=True)
    runs = {"lora": (train_lora_cmd, "lora.safetensors"), "full": (train_full_cmd, None)}
    for kind in args.only or list(runs):
        make, _ = runs[kind]
        name = f"{kind}{args.label}"
        out = work / f"{CONCEPT}_{name}_{args.n_images}img_{args.steps}"
        cmd = make(data, out, args.steps, args.batch_size)
        if kind == "lora" and args.lora_args:
            cmd += args.lora_args.split()
        record["commands"][name] = " ".join(cmd[2:])
        print(f"{name}: {' '.join(cmd[2:])}", flush=True)
        usage = timed_child(cmd, work / f"{CONCEPT}_{name}_{args.n_images}img_{args.steps}.log")
        summary = json.loads((out / "summary.json").read_text())
        ckpt = Path(summary["checkpoint"])
        if kind == "lora":
            m = load_model(base, ckpt)
            trainable = summary["adapter_parameters"]
        else:
            m = load_model(ckpt)
            trainable = count_full_trainable(str(ckpt))
        res = {
            "images": args.n_images,
            "steps": args.steps,
            "trainable_parameters": trainable,
            "sec_per_step": sec_per_step(out),
            **usage,
            "file": ckpt.name,
            "file_mib": round(ckpt.stat().st_size / 2**20, 3),
            "final_loss": summary["final"].get("loss"),
            **evaluate(m, args.n_concept, args.n_base),
        }
        record["runs"][name] = res
        print(json.dumps(res), flush=True)
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.is_file() and (args.only or args.skip_base) else {}
        if old:
            old.setdefault("runs", {}).update(record["runs"])
            old.setdefault("commands", {}).update(record["commands"])
            record = {**record, "runs": old["runs"], "commands": old["commands"]}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    table(record)


def table(record: dict[str, Any]) -> None:
    print(
        f"\n{'run':<18} {'concept':>8} {'match':>6} {'base':>6} {'params':>10} {'s/step':>7} {'RSS MiB':>8} {'MiB':>7}"
    )
    for name, r in record["runs"].items():
        c, b = r.get("concept", {}), r.get("base", {})
        print(
            f"{name:<18} {c.get('concept', math.nan):>8.3f} {c.get('match', math.nan):>6.3f} "
            f"{b.get('match', math.nan):>6.3f} {r['trainable_parameters']:>10,} {r.get('sec_per_step', math.nan):>7.3f} "
            f"{r.get('peak_rss_mib', math.nan):>8.0f} {r.get('file_mib', math.nan):>7.2f}"
        )


def cmd_curve(args: argparse.Namespace) -> None:
    """Concept (and optionally base) rate at every step checkpoint of a train-lora run folder."""
    base = base_checkpoint()
    rows = []
    for ckpt in sorted((args.run_dir / "checkpoints").glob("step_*.safetensors")):
        step = int(ckpt.stem.split("_")[1])
        res = evaluate(load_model(base, ckpt, args.scale), args.n_concept, args.n_base)
        rows.append({"step": step, **res})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run_dir), "curve": rows}, indent=2) + "\n")


def cmd_grid(args: argparse.Namespace) -> None:
    """One row per model (base, each --lora adapter, each --ckpt), one column per concept prompt
    (the first --n of the evaluation prompts, sample seed 0), upscaled x3 (nearest) for the docs."""
    from ldmctl.cli._console import save_grid

    prompts = concept_prompts(args.n)
    base = base_checkpoint()
    models = {"base": load_model(base)}
    models.update({f"lora {Path(f).parent.name}": load_model(base, f) for f in args.lora})
    models.update({f"full {Path(f).parent.name}": load_model(f) for f in args.ckpt})
    with torch.no_grad():
        rows = {name: generate(m, prompts, guidance=3.0, steps=20, seed=0) for name, m in models.items()}
    save_grid(rows, args.out, max_cols=args.n)
    img = Image.open(args.out)
    img.resize((img.width * 3, img.height * 3), Image.NEAREST).save(args.out)
    print(json.dumps({"rows": list(rows), "columns": prompts, "file": str(args.out)}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write the captioned concept folder")
    d.add_argument("dir", type=Path)
    d.add_argument("--n", type=int, default=50)
    d.add_argument("--seed", type=int, default=DATA_SEED)
    d.add_argument("--captions", choices=["full", "short"], default="full")
    r = sub.add_parser("run", help="base vs train-lora vs train-ldm --init")
    r.add_argument("--steps", type=int, default=800)
    r.add_argument("--batch-size", type=int, default=4)
    r.add_argument("--n-images", type=int, default=50)
    r.add_argument("--n-concept", type=int, default=100)
    r.add_argument("--n-base", type=int, default=200)
    r.add_argument("--work", type=Path, default=Path("runs/lora_concept"))
    r.add_argument("--only", nargs="*", choices=["lora", "full"])
    r.add_argument("--skip-base", action="store_true")
    r.add_argument("--captions", choices=["full", "short"], default="full", help='short: every caption "a bar"')
    r.add_argument("--lora-args", default="", help='more train-lora options, e.g. "--lr 1e-3"')
    r.add_argument("--label", default="", help="suffix of the run names (e.g. _lr1e-3)")
    r.add_argument("--machine", default="2-core shared CPU, OMP_NUM_THREADS=1")
    r.add_argument("--out", type=Path)
    c = sub.add_parser("curve", help="concept rate over the saved steps of a train-lora run")
    c.add_argument("run_dir", type=Path)
    c.add_argument("--n-concept", type=int, default=100)
    c.add_argument("--n-base", type=int, default=0)
    c.add_argument("--scale", type=float, default=1.0)
    c.add_argument("--out", type=Path)
    g = sub.add_parser("grid", help="a sample grid: base, adapters, fine-tunes x concept prompts")
    g.add_argument("--lora", nargs="*", default=[])
    g.add_argument("--ckpt", nargs="*", default=[])
    g.add_argument("--n", type=int, default=8)
    g.add_argument("--out", type=Path, required=True)
    for sp in (d, r, c, g):
        sp.add_argument("--concept", choices=CONCEPTS, default=CONCEPT)
    args = ap.parse_args()
    set_concept(args.concept)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.cmd == "data":
        caps = write_folder(args.dir, args.n, args.seed, args.captions)
        print(f"{len(caps)} images in {args.dir}; e.g. {caps[:3]}")
    elif args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "grid":
        cmd_grid(args)
    else:
        cmd_curve(args)


if __name__ == "__main__":
    main()
