"""ldmctl's UNet beside diffusers' UNet2DConditionModel, same configs, interleaved timing.

    python bench/bench_unet.py [--configs unet_small,unet_large] [--quick] [--no-bf16] [--out bench/out/unet.jsonl]

Reuses the harness of ../shared/bench (interleaved A/B timer, FLOP counter that knows the CPU
flash-attention kernel, peak-RSS reset). For each config: parameters and forward FLOPs of both
models, then forward at batch 1/8/32, forward+backward+AdamW at batch 8/32 and a DDIM loop with
classifier-free guidance at batch 4 (50 steps for small; 10 for large, as the baseline README
does, since one large 50-step loop takes ~40 s), in fp32 and in bf16 autocast. Each row is
timed interleaved (ldmctl, diffusers, ldmctl, ...) and reports medians and the time ratio
ldmctl / diffusers (below 1 = ldmctl faster). Peak RSS is measured per model in a separate
short pass with the high-water mark reset first.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("BENCH_SHARED", HERE.parent.parent / "shared" / "bench"))
sys.path.insert(0, str(SHARED))
sys.path.insert(0, str(HERE))

import common  # noqa: E402 - found through the sys.path entries above
import diffusers_baseline as db  # noqa: E402
import torch  # noqa: E402
from peer_factory import build as build_ldmctl  # noqa: E402


def ldmctl_ddim_loop(model, name: str, steps: int, batch: int = 4, bf16: bool = False):
    """ldmctl's DDIM (same schedule and timesteps as the bench's DDIMScheduler) with CFG 7.5."""
    from ldmctl.conditioning import Cond
    from ldmctl.samplers import ddim
    from ldmctl.samplers.guidance import cfg_model_fn
    from ldmctl.schedule import Schedule

    ss = db.CONFIGS[name]["sample_size"]
    schedule = Schedule.make("sqrt_linear", 1000, 0.00085, 0.012)
    g = torch.Generator().manual_seed(7)
    cond = Cond(context=torch.randn(batch, db.CTX_TOKENS, db.CTX_DIM, generator=g))
    uncond = Cond(context=torch.zeros(batch, db.CTX_TOKENS, db.CTX_DIM))
    unet = model.inner
    fn = cfg_model_fn(unet, cond, uncond, db.GUIDANCE)

    def f():
        noise = torch.randn(batch, 4, ss, ss, generator=g)
        with torch.no_grad(), db.amp_ctx(bf16):
            return ddim(fn, schedule, noise, steps=steps)

    return f


def emit(out, rec):
    print(json.dumps(rec), file=out, flush=True)
    if rec.get("kind") == "row":
        print(
            f"{rec['model']:<10} {rec['case']:<22} b{rec['batch']:<3} {rec['precision']:<5} "
            f"ldmctl {rec['ldmctl_ms']:9.1f} ms  diffusers {rec['diffusers_ms']:9.1f} ms  "
            f"ratio {rec['ratio']:.2f}",
            file=sys.stderr,
            flush=True,
        )


def timed_pair(out, fns: dict, reps: int, meta: dict, warmup: int = 1):
    times = common.time_calls(fns, reps=reps, warmup=warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    emit(
        out,
        {
            "kind": "row",
            **meta,
            "ldmctl_ms": med["ldmctl"] * 1e3,
            "diffusers_ms": med["diffusers"] * 1e3,
            "ratio": med["ldmctl"] / med["diffusers"],
            "n": len(times["ldmctl"]),
            "ldmctl_p25_p75_ms": [common.summarize(times["ldmctl"])[k] * 1e3 for k in ("p25_s", "p75_s")],
            "diffusers_p25_p75_ms": [common.summarize(times["diffusers"])[k] * 1e3 for k in ("p25_s", "p75_s")],
        },
    )


def peak_rss(fn, reps: int = 2) -> float:
    common.reset_peak_rss()
    for _ in range(reps):
        fn()
    return round(common.peak_rss_mib(), 1)


def run_config(out, name: str, quick: bool, bf16_too: bool) -> None:
    torch.manual_seed(0)
    ref, _ = db.build(name)
    ours = build_ldmctl(name, copy.deepcopy(db.CONFIGS[name]))
    models = {"ldmctl": ours.eval(), "diffusers": ref.eval()}
    inp1 = db.unet_inputs(name, 1)
    flops = {k: db.count_flops(db.unet_fwd(m, inp1))[0] for k, m in models.items()}
    emit(
        out,
        {
            "kind": "model",
            "model": name,
            "params": {k: db.n_params(m) for k, m in models.items()},
            "fwd_flops_b1": flops,
            "flops_ratio": flops["ldmctl"] / flops["diffusers"],
        },
    )
    large = name == "unet_large"
    fwd_reps = {1: 8, 8: 5, 32: 3} if large else {1: 20, 8: 12, 32: 6}
    train_reps = {8: 3, 32: 2} if large else {8: 8, 32: 4}
    ddim_steps, ddim_reps = (10, 2) if large else (50, 4)
    if quick:
        fwd_reps = {k: max(2, v // 4) for k, v in fwd_reps.items()}
        train_reps = {k: 2 for k in train_reps}
        ddim_steps, ddim_reps = 5, 2
    for bf16 in [False, True] if bf16_too else [False]:
        prec = "bf16" if bf16 else "fp32"
        for bs, reps in fwd_reps.items():
            inp = db.unet_inputs(name, bs)
            fns = {k: db.unet_fwd(m, inp, bf16=bf16) for k, m in models.items()}
            timed_pair(out, fns, reps, {"model": name, "case": "fwd", "batch": bs, "precision": prec})
            if bs == 8 and not bf16:
                emit(
                    out,
                    {
                        "kind": "rss",
                        "model": name,
                        "case": "fwd",
                        "batch": 8,
                        "peak_rss_mib": {k: peak_rss(f) for k, f in fns.items()},
                    },
                )
        for m in models.values():
            m.train()
        for bs, reps in train_reps.items():
            inp = db.unet_inputs(name, bs)
            fns = {k: db.unet_train(m, db.make_opt(m), inp, bf16=bf16) for k, m in models.items()}
            timed_pair(out, fns, reps, {"model": name, "case": "train (fwd+bwd+AdamW)", "batch": bs, "precision": prec})
            if bs == 8 and not bf16:
                emit(
                    out,
                    {
                        "kind": "rss",
                        "model": name,
                        "case": "train",
                        "batch": 8,
                        "peak_rss_mib": {k: peak_rss(f) for k, f in fns.items()},
                    },
                )
        for m in models.values():
            m.eval()
        fns = {
            "ldmctl": ldmctl_ddim_loop(ours, name, ddim_steps, bf16=bf16),
            "diffusers": db.ddim_loop(ref, name, ddim_steps, bf16=bf16),
        }
        timed_pair(
            out,
            fns,
            ddim_reps,
            {"model": name, "case": f"DDIM {ddim_steps} steps + CFG", "batch": 4, "precision": prec},
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="unet_small,unet_large")
    ap.add_argument("--quick", action="store_true", help="few repeats, 5 DDIM steps (smoke test)")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 rows only")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "unet.jsonl")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    db._register_cpu_sdpa_flops()  # count the CPU flash-attention kernel like the baseline does
    started = time.time()
    with args.out.open("w") as out:
        emit(out, {"kind": "machine", **common.machine_info(), "torch_threads": torch.get_num_threads()})
        for name in args.configs.split(","):
            run_config(out, name, args.quick, not args.no_bf16)
        emit(out, {"kind": "done", "wall_s": round(time.time() - started, 1)})
    print(f"wrote {args.out} in {time.time() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
