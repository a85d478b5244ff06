"""Time and profile one train-ae step of a preset (default: small, batch 8, 64x64).

    python bench/profile_train_ae.py [--preset small] [--steps 20] [--precision fp32 bf16]

Prints, per precision, the median step time and steps/s over ``--steps`` timed steps after two
warm-up steps, then the top operators by self CPU time (torch.profiler) for the first precision.
The step is exactly the one ``ldmctl train-ae`` runs (``ldmctl.train.ae.train_step``), with the
GAN term on or off as ``--gan`` says, and data taken from builtin:photos as in training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from torch.profiler import ProfilerActivity, profile

from ldmctl.config import merge, preset
from ldmctl.data import open_dataset
from ldmctl.train.ae import build_run, train_step
from ldmctl.train.loop import batch_stream


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--gan", action="store_true", help="time with the PatchGAN term active")
    args = ap.parse_args()
    results = {}
    for precision in args.precision:
        cfg = merge(preset(args.preset), {"loss": {"perceptual": "none", "disc_start": 0 if args.gan else 10**9},
                                          "train": {"precision": precision}})
        run = build_run(cfg, None)
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
        results[precision] = {"median_s": round(med, 4), "steps_per_s": round(1 / med, 3),
                              "data_ms": round(1000 * statistics.median(data_times), 2),
                              "batch": cfg.train.batch_size, "size": cfg.data.size}
        print(json.dumps({"preset": args.preset, "precision": precision, "gan": args.gan, **results[precision]}))
        if precision == args.precision[0]:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    train_step(run, next(batches)["image"])
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
