"""LoRA stability on the new-concept case (bench/lora_concept.py, the bar): learning rate x rank x alpha x precision,
and ablations of the defaults (warm-up, clipping, rank-stabilised scaling, zero-initialised ``up``).

    python bench/lora_sweep.py [--steps 400] [--grid lr,rank,alpha,precision] [--ablations]
                               [--n-eval 64] [--out bench/results/lora_sweep.json]

Every run trains in this process (``ldmctl.train.lora.train_lora``, one at a time, CPU) on the
50-image concept folder, batch 4, seed 0, from train-lora's defaults except the swept fields, and
records: the mean loss of the last 50 steps, the largest gradient norm (before clipping), whether
a loss went non-finite (the run stops after 5 in a row), the concept rate on ``--n-eval`` concept
prompts and the base match on ``--n-eval`` builtin:shapes prompts (bench/lora_concept.py's
measures), and an fp16 proxy: on one fixed batch in float32, the largest |output| of any Linear or
Conv2d of the UNet (fp16 overflows above 65,504) and the share of the adapters' gradient entries
below 2^-24 (they flush to zero in fp16 without a loss scale).

``up_init=random`` (ablation) draws ``up`` like ``down`` instead of zeros: the adapted model then
differs from the base before the first step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ldmctl.train.lora as train_lora_module
from ldmctl.config import DataConfig
from ldmctl.errors import TrainingError
from ldmctl.lora import LoRAConfig, lora_parameters
from ldmctl.train.loop import Callbacks
from ldmctl.train.lora import LoRATrainingConfig, train_lora

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lora_concept as lc  # noqa: E402

FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest fp16 subnormal
DEFAULTS = {"lr": 1e-4, "rank": 8, "alpha": 8.0, "precision": "fp32", "warmup": 50, "clip": 1.0, "rs": False}
_add_lora = train_lora_module.add_lora


def _random_up(model: nn.Module, cfg: LoRAConfig, *, name: str = "default", seed: int = 0) -> list[nn.Parameter]:
    params = _add_lora(model, cfg, name=name, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in params[1::2]:  # (down, up) pairs: re-draw every up like its down
            bound = 1 / math.sqrt(p.shape[1])
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
    return params


def build_cfg(data: Path, steps: int, s: dict[str, Any]) -> LoRATrainingConfig:
    base = LoRATrainingConfig()
    return replace(
        base,
        base=lc.base_checkpoint(),
        lora=LoRAConfig(rank=s["rank"], alpha=float(s["alpha"]), rank_stabilised=s["rs"]),
        data=DataConfig(source=str(data), size=lc.SIZE, flip=False),
        train=replace(
            base.train,
            lr=s["lr"],
            max_steps=steps,
            batch_size=4,
            precision=s["precision"],
            warmup_steps=s["warmup"],
            grad_clip=s["clip"],
            seed=0,
            device="cpu",
            log_every=1,
            sample_every=10 * steps,
            save_every=steps,
        ),
    )


def fp16_proxy(run_dir: Path, adapter: Path | None, data: Path) -> dict[str, float]:
    """Largest |Linear/Conv2d output| of the UNet and the share of adapter gradients < 2^-24, fp32."""
    from ldmctl.data.images import pil_to_tensor
    from ldmctl.lora import load_lora

    model = lc.load_model(lc.base_checkpoint())
    if adapter is not None:
        load_lora(model, adapter)
        for p in lora_parameters(model, adapter.stem):
            p.requires_grad_(True)
    lines = (data / "metadata.jsonl").read_text().splitlines()[:8]
    rows = [json.loads(x) for x in lines]
    from PIL import Image

    x = torch.stack([pil_to_tensor(Image.open(data / r["file_name"]).convert("RGB")) for r in rows])
    peak = [0.0]

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        peak[0] = max(peak[0], float(out.detach().abs().max()))

    handles = [m.register_forward_hook(hook) for m in model.unet.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    g = torch.Generator().manual_seed(0)
    batch = {"z0": model.encode(x), "caption": [r["text"] for r in rows]}
    loss, _ = model.training_loss(batch, generator=g)
    out = {"max_abs_activation": round(peak[0], 2)}
    if adapter is not None:
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in lora_parameters(model, adapter.stem) if p.grad is not None])
        out["grad_below_fp16_tiny"] = round(float((grads.abs() < FP16_TINY).float().mean()), 4)
        out["max_abs_grad"] = float(grads.abs().max())
    for h in handles:
        h.remove()
    return out


def one_run(data: Path, work: Path, steps: int, s: dict[str, Any], n_eval: int) -> dict[str, Any]:
    name = "_".join(f"{k}{v}" for k, v in s.items())
    out = work / name
    cfg = build_cfg(data, steps, s)
    train_lora_module.add_lora = _random_up if s.get("up_init") == "random" else _add_lora
    started = time.time()
    res: dict[str, Any] = {**s}
    try:
        summary = train_lora(cfg, out, callbacks=Callbacks())
        res["stopped"] = None
    except TrainingError as e:
        summary, res["stopped"] = None, str(e).split(";")[0]
    finally:
        train_lora_module.add_lora = _add_lora
    res["train_s"] = round(time.time() - started, 1)
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()] if (out / "log.jsonl").exists() else []
    losses = [r["loss"] for r in logs if "loss" in r]
    finite = [v for v in losses if math.isfinite(v)]
    res["steps_done"] = logs[-1]["step"] if logs else 0
    res["loss_last50"] = round(sum(finite[-50:]) / max(1, len(finite[-50:])), 4) if finite else None
    res["nonfinite_losses"] = len(losses) - len(finite)
    norms = [r["grad_norm"] for r in logs if "grad_norm" in r and math.isfinite(r["grad_norm"])]
    res["max_grad_norm"] = round(max(norms), 4) if norms else None
    res["sec_per_step"] = round(1 / summary["steps_per_s"], 4) if summary and summary["steps_per_s"] else None
    adapter = out / "lora.safetensors"
    if summary is not None and adapter.exists():
        model = lc.load_model(lc.base_checkpoint(), adapter)
        ev = lc.evaluate(model, n_eval, n_eval)
        res["concept"], res["base_match"] = ev["concept"]["concept"], ev["base"]["match"]
        try:
            res.update(fp16_proxy(out, adapter, data))
        except Exception as e:  # a diverged adapter may not even run
            res["proxy_error"] = repr(e)
    print(json.dumps(res), flush=True)
    return res


def step0(n_eval: int) -> dict[str, Any]:
    """The model before any training step, with a fresh rank-8 adapter: zero ``up`` (ldmctl) or random
    ``up`` (drawn like ``down``): concept rate and base match, and how far the outputs moved."""
    out: dict[str, Any] = {}
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 300, 600, 900])
    ref = None
    for name, add in (("base", None), ("zero_up", _add_lora), ("random_up", _random_up)):
        model = lc.load_model(lc.base_checkpoint())
        if add is not None:
            add(model, LoRAConfig(), seed=0)
        with torch.no_grad():
            ctx = model.cond({"caption": ["a red circle to the left of a blue square"] * 4})
            eps = model.model_fn(ctx)(x, t)
        ref = eps if ref is None else ref
        out[name] = {
            **lc.evaluate(model.eval(), n_eval, n_eval),
            "eps_change_rms": float((eps - ref).pow(2).mean().sqrt()),
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def markdown(paths: list[Path]) -> str:
    """The runs of result files as one markdown table (the docs/lora.md tables)."""
    lines = [
        "| lr | rank | alpha | scale | precision | setting | loss (last 50) | max grad norm | concept | base match "
        "| max \\|activation\\| |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        for r in json.loads(path.read_text())["runs"]:
            scale = r["alpha"] / (math.sqrt(r["rank"]) if r["rs"] else r["rank"])
            setting = r.get("ablation", "")
            norm = "-" if r["max_grad_norm"] is None else f"{r['max_grad_norm']:.3g}"
            lines.append(
                f"| {r['lr']:g} | {r['rank']} | {r['alpha']:g} | {scale:g} | {r['precision']} | {setting} "
                f"| {r['loss_last50']} | {norm} | {r.get('concept', float('nan')):.0%} "
                f"| {r.get('base_match', float('nan')):.0%} | {r.get('max_abs_activation', float('nan')):,.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--concept", choices=lc.CONCEPTS, default=lc.CONCEPT)
    ap.add_argument("--data", type=Path, help="default: runs/lora_concept/<concept>50 (made if missing)")
    ap.add_argument("--work", type=Path, default=Path("runs/lora_sweep"))
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3, 1e-2])
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--alpha-mults", type=float, nargs="+", default=[1.0, 4.0], help="alpha = rank x this")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--ablation-lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--step0", action="store_true", help="only: zero vs random up before training")
    ap.add_argument("--table", type=Path, nargs="+", help="only: print these result files as a markdown table")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.table:
        print(markdown(args.table))
        return
    torch.set_num_threads(1)
    lc.set_concept(args.concept)
    args.data = args.data or Path(f"runs/lora_concept/{args.concept}50")
    if not (args.data / "metadata.jsonl").is_file():
        lc.write_folder(args.data, 50)
    if args.step0:
        record0 = {"n_eval": args.n_eval, "rank": 8, "alpha": 8, "step0": step0(args.n_eval)}
        if args.out:
            args.out.write_text(json.dumps(record0, indent=2) + "\n")
        return
    settings: list[dict[str, Any]] = []
    if not args.no_grid:
        for prec, lr, rank, mult in itertools.product(args.precisions, args.lrs, args.ranks, args.alpha_mults):
            settings.append({**DEFAULTS, "lr": lr, "rank": rank, "alpha": rank * mult, "precision": prec})
    if args.ablations:
        for lr in args.ablation_lrs:
            settings += [
                {**DEFAULTS, "lr": lr, "ablation": "defaults"},
                {**DEFAULTS, "lr": lr, "warmup": 0, "ablation": "no warm-up"},
                {**DEFAULTS, "lr": lr, "clip": 0.0, "ablation": "no clipping"},
                {**DEFAULTS, "lr": lr, "warmup": 0, "clip": 0.0, "ablation": "no warm-up, no clipping"},
                {**DEFAULTS, "lr": lr, "up_init": "random", "ablation": "random up"},
                {**DEFAULTS, "lr": lr, "rank": 64, "alpha": 8.0, "ablation": "rank 64, alpha/r"},
                {**DEFAULTS, "lr": lr, "rank": 64, "alpha": 8.0, "rs": True, "ablation": "rank 64, rsLoRA"},
            ]
    base_model = lc.load_model(lc.base_checkpoint())
    record: dict[str, Any] = {
        "concept": args.concept,
        "steps": args.steps,
        "batch_size": 4,
        "n_eval": args.n_eval,
        "data": str(args.data),
        "base": {**lc.evaluate(base_model, args.n_eval, args.n_eval), **fp16_proxy(args.work, None, args.data)},
        "runs": [],
    }
    print(json.dumps(record["base"]), flush=True)
    old = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    for s in settings:
        record["runs"].append(one_run(args.data, args.work, args.steps, s, args.n_eval))
        if args.out:
            merged = [r for r in old.get("runs", []) if r not in record["runs"]]
            args.out.write_text(json.dumps({**record, "runs": merged + record["runs"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
