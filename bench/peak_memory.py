"""Peak memory (max resident set size) of train-ae and train-ldm for each preset, on this machine.

Each configuration runs a few steps of the real CLI in a child process; ``os.wait4`` gives that
child's own peak RSS (model, optimizer state, activations, data, and the Python/torch runtime of
about 0.4 GiB). LDM runs use the autoencoder the AE run of the same preset wrote. The memory
knobs of train-ldm (gradient checkpointing, accumulation, bf16) are measured on the base preset.

    python bench/peak_memory.py [--steps 3] [--json docs/results/peak_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = [  # (name, preset, extra flags); an LDM uses the last AE run of its preset, else the small one (f = 4 too)
    ("ae", "tiny", []),
    ("ldm", "tiny", []),
    ("ae", "small", []),
    ("ldm", "small", []),
    ("ae", "base", []),
    ("ae", "base", ["--batch-size", "2"]),
    ("ldm", "base", []),
    # the memory knobs, encoding on the fly (no latent cache) so they measure training itself
    ("ldm", "base", ["--set", "cache_latents=false"]),
    ("ldm", "base", ["--set", "cache_latents=false", "--grad-checkpointing"]),
    ("ldm", "base", ["--set", "cache_latents=false", "--grad-accum", "4"]),
    ("ldm", "base", ["--set", "cache_latents=false", "--precision", "bf16"]),
]


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def peak_rss(cmd: list[str], cap_gib: float) -> tuple[float, float, int, bool]:
    """Run ``cmd``; return (peak RSS in GiB, wall seconds, exit status, killed for passing ``cap_gib``).
    The cap protects the machine: a run that passes it is killed and reported as "> cap"."""
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    over = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if not over and _rss_gib(proc.pid) > cap_gib:
            proc.kill()
            over = True
        time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 2**20, time.time() - started, proc.returncode, over  # ru_maxrss: KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default="docs/results/peak_memory.json")
    ap.add_argument("--cap", type=float, default=12.0, help="GiB; a run above it is killed and reported as over")
    ap.add_argument(
        "--skip",
        type=int,
        default=0,
        help="skip the first N runs (their autoencoders still train, unrecorded, for the LDM runs after)",
    )
    args = ap.parse_args()
    cli = [sys.executable, "-m", "ldmctl"]
    rows, ae_of = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, preset, extra) in enumerate(RUNS):
            if i < args.skip and (kind == "ldm" or extra or preset == "base"):
                continue
            out = Path(tmp) / f"{i}-{kind}-{preset}"
            common = [
                "--preset",
                preset,
                "--max-steps",
                str(args.steps),
                "--data",
                "builtin:photos",
                "--out",
                str(out),
                "--save-every",
                str(args.steps),
                "--sample-every",
                "100000",
            ]
            if kind == "ae":
                cmd = [*cli, "train-ae", *common, "--perceptual", "none", *extra]
            else:
                cmd = [*cli, "train-ldm", *common, "--ae", str(ae_of.get(preset, ae_of.get("small"))), *extra]
            gib, secs, code, over = peak_rss(cmd, args.cap)
            ok = code == 0 and not over
            if kind == "ae" and ok:
                ae_of[preset] = out / "ae.safetensors"
            row = {
                "command": kind,
                "preset": preset,
                "flags": " ".join(extra),
                "peak_rss_gib": round(gib, 2),
                "seconds": round(secs, 1),
                "ok": ok,
                "over_cap_gib": args.cap if over else None,
                "autoencoder": None if kind == "ae" else str(ae_of.get(preset, ae_of.get("small"))).split("/")[-2],
            }
            if i >= args.skip:
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"steps": args.steps, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
