"""Time and profile one train-ae step of a preset (default: small, batch 8, 64x64).

    python bench/profile_train_ae.py [--preset small] [--steps 20] [--precision fp32 bf16]
    python bench/profile_train_ae.py --config docs/recipes/ae-kl-f4-photos.toml --precision bf16 \
        --batch-size 4 8 16 32 [--compile] [--no-profile] [--optimizer adam muon]

Prints, per precision, the median step time and steps/s over ``--steps`` timed steps after two
warm-up steps, then the top operators by self CPU time (torch.profiler) for the first precision.
The step is exactly the one ``ldmctl train-ae`` runs (``ldmctl.train.ae.train_step``), with the
GAN term on or off as ``--gan`` says, and data taken from builtin:photos as in training.
``--config`` merges a recipe onto the preset (its loss settings win over the defaults here),
``--batch-size`` times several batch sizes (samples/s shows what a larger batch buys), and
``--compile`` wraps the autoencoder in ``torch.compile`` (default inductor backend; the compile
time is excluded, the first two steps being warm-up); ``--optimizer`` times each optimizer
given (``train.optimizer``; default: the config's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from torch.profiler import ProfilerActivity, profile

from ldmctl.config import load_file, merge, preset
from ldmctl.data import open_dataset
from ldmctl.train.ae import build_run, train_step
from ldmctl.train.loop import batch_stream


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--gan", action="store_true", help="time with the PatchGAN term active")
    ap.add_argument("--config", help="a train-ae recipe (TOML) merged onto the preset")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[0], help="batch sizes (0: the config's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the autoencoder")
    ap.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
    ap.add_argument("--optimizer", nargs="+", default=[""], help="adam and/or muon (default: the config's)")
    args = ap.parse_args()
    for optimizer in args.optimizer:
        for precision in args.precision:
            for batch_size in args.batch_size:
                first = precision == args.precision[0] and optimizer == args.optimizer[0]
                _time(args, precision, batch_size, optimizer, profile_it=first and not args.no_profile)


def _time(args: argparse.Namespace, precision: str, batch_size: int, optimizer: str, *, profile_it: bool) -> None:
    base = merge(preset(args.preset), load_file(args.config)) if args.config else preset(args.preset)
    over: dict = {"loss": {"perceptual": "none"}, "train": {"precision": precision}}
    if not args.config:
        over["loss"]["disc_start"] = 0 if args.gan else 10**9
    if batch_size:
        over["train"]["batch_size"] = batch_size
    if optimizer:
        over["train"]["optimizer"] = optimizer
    cfg = merge(base, over)
    run = build_run(cfg, None)
    if args.compile:
        import torch

        run.ae = torch.compile(run.ae)
    batches = batch_stream(open_dataset(cfg.data, seed=0), cfg.train.batch_size, seed=0)
    times, data_times = [], []
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        x = next(batches)["image"]
        t1 = time.perf_counter()
        train_step(run, x)
        run.step += 1
        if i >= 2:
            times.append(time.perf_counter() - t0)
            data_times.append(t1 - t0)
    med = statistics.median(times)
    b = cfg.train.batch_size
    print(
        json.dumps(
            {
                "preset": args.preset,
                "config": args.config,
                "precision": precision,
                "gan": args.gan,
                "compile": args.compile,
                "optimizer": cfg.train.optimizer,
                "median_s": round(med, 4),
                "steps_per_s": round(1 / med, 3),
                "samples_per_s": round(b / med, 1),
                "data_ms": round(1000 * statistics.median(data_times), 2),
                "batch": b,
                "size": cfg.data.size,
            }
        ),
        flush=True,
    )
    if profile_it:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                train_step(run, next(batches)["image"])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
