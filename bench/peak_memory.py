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

RUNS = [  # (name, preset, extra train-ldm flags); AE runs come first for each preset
    ("ae", "tiny", []), ("ldm", "tiny", []),
    ("ae", "small", []), ("ldm", "small", []),
    ("ae", "base", []), ("ldm", "base", []),
    ("ldm", "base", ["--grad-checkpointing"]),
    ("ldm", "base", ["--grad-accum", "4"]),
    ("ldm", "base", ["--precision", "bf16"]),
]


def peak_rss(cmd: list[str]) -> tuple[float, float, int]:
    """Run ``cmd``; return (peak RSS in GiB, wall seconds, exit status)."""
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(err[-2000:], file=sys.stderr)
    return usage.ru_maxrss / 2**20, time.time() - started, code  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default="docs/results/peak_memory.json")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "ldmctl"]
    rows, ae_of = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kind, preset, extra) in enumerate(RUNS):
            out = Path(tmp) / f"{i}-{kind}-{preset}"
            common = ["--preset", preset, "--max-steps", str(args.steps), "--data", "builtin:photos",
                      "--out", str(out), "--save-every", str(args.steps), "--sample-every", "100000"]
            if kind == "ae":
                cmd = [*cli, "train-ae", *common, "--perceptual", "none"]
                ae_of[preset] = out / "ae.safetensors"
            else:
                cmd = [*cli, "train-ldm", *common, "--ae", str(ae_of[preset]), *extra]
            gib, secs, code = peak_rss(cmd)
            row = {"command": kind, "preset": preset, "flags": " ".join(extra), "peak_rss_gib": round(gib, 2),
                   "seconds": round(secs, 1), "ok": code == 0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"steps": args.steps, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
