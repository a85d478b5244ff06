"""Kill a training run with SIGKILL at random moments, resume it each time, and check the result.

    python bench/fault_injection.py [--trainer ldm|ae] [--kills 10] [--steps 1500] [--seed 0] [--out runs/fault] [--json FILE]

1. trains a tiny autoencoder (the tiny preset, builtin:synthetic) and, as the reference, a tiny LDM
   (``--trainer ae``: a tiny autoencoder with its PatchGAN on) for ``--steps`` steps without interruption;
2. runs the same command again in a subprocess, SIGKILLs it at a random moment (every 4th kill
   during start-up, the others during training, spread so that steps remain for each), checks that
   every checkpoint file in the run folder can be read, and restarts it with ``--resume`` (from
   scratch while no checkpoint exists yet) — ``--kills`` times — then lets it finish;
3. compares the final weights (UNet, EMA, conditioners) with the reference, tensor by tensor.

Everything runs single-threaded (OMP_NUM_THREADS=1) so the two runs do the same arithmetic.
Prints one JSON record: kills, resumes, unreadable checkpoint files seen, identical yes/no.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ldmctl.checkpoint import load_train_state, read_checkpoint
from ldmctl.errors import CheckpointError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def ldmctl(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "ldmctl"), *args]


def train_cmd(trainer: str, ae: Path, out: Path, steps: int, seed: int, resume: bool) -> list[str]:
    common = [
        "--preset",
        "tiny",
        "--data",
        "builtin:synthetic",
        "--max-steps",
        str(steps),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--set",
        "train.save_every=25",
        "--set",
        "train.sample_every=100000",
    ]
    if trainer == "ae":  # the GAN from step 1 on, so the discriminator and its optimizer are resumed too
        cmd = ldmctl("train-ae", *common, "--perceptual", "none", "--set", "loss.disc_start=1")
    else:
        cmd = ldmctl("train-ldm", *common, "--ae", str(ae))
    return cmd + (["--resume"] if resume else [])


def unreadable(out: Path) -> list[str]:
    """Checkpoint files in ``out`` that cannot be read back (the bug this script hunts)."""
    bad = []
    for f in sorted(out.rglob("*.safetensors")):
        try:
            read_checkpoint(f)
        except CheckpointError as err:
            bad.append(f"{f}: {err}")
    for f in sorted(out.rglob("*.state.pt")):
        try:
            load_train_state(f)
        except Exception as err:  # noqa: BLE001 - any failure to read is a finding
            bad.append(f"{f}: {err}")
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", choices=["ldm", "ae"], default="ldm")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/fault"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = args.out
    ae = root / "ae" / "ae.safetensors"
    if not ae.is_file():
        subprocess.run(
            ldmctl(
                "train-ae",
                "--preset",
                "tiny",
                "--data",
                "builtin:synthetic",
                "--perceptual",
                "none",
                "--max-steps",
                "2",
                "--out",
                str(root / "ae"),
            ),
            env=ENV,
            check=True,
            capture_output=True,
        )
    ref, run = root / "reference", root / "killed"
    started, startup_s = time.time(), None
    proc = subprocess.Popen(
        train_cmd(args.trainer, ae, ref, args.steps, args.seed, False),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None:  # start-up = time to the first log line (step 10): imports, data, latent cache
        if startup_s is None and (ref / "log.jsonl").is_file() and (ref / "log.jsonl").stat().st_size:
            startup_s = time.time() - started
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit("the reference run failed")
    ref_s = time.time() - started
    startup_s = startup_s or 0.0
    kills, resumes, bad, log = 0, 0, [], []
    while True:
        resume = any(run.glob("checkpoints/step_*.state.pt"))
        if run.exists() and not resume:  # killed before its first checkpoint: start again
            subprocess.run(["rm", "-rf", str(run)], check=True)
        proc = subprocess.Popen(
            train_cmd(args.trainer, ae, run, args.steps, args.seed, resume),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        resumes += resume
        if kills < args.kills:
            # every 4th kill lands at a random moment of start-up (imports, data, latent cache), the
            # others at a random moment of training: after the run's next log line, within the time
            # of 1/(2 x kills) of the run's steps, so steps remain for every kill whatever the load
            log_file = run / "log.jsonl"
            before = log_file.stat().st_size if log_file.is_file() else 0
            if kills % 4 == 3:
                delay = rng.uniform(0.0, startup_s)
            else:
                while proc.poll() is None and (log_file.stat().st_size if log_file.is_file() else 0) <= before:
                    time.sleep(0.02)
                delay = rng.uniform(0.0, (ref_s - startup_s) / (2 * args.kills))
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                found = unreadable(run)
                bad += found
                step = max(
                    (int(p.stem.split("_")[1].split(".")[0]) for p in run.glob("checkpoints/step_*.state.pt")),
                    default=0,
                )
                trained = (log_file.stat().st_size if log_file.is_file() else 0) > before
                log.append(
                    {
                        "kill": kills,
                        "phase": "training" if trained else "start-up",
                        "last_checkpoint_step": step,
                        "unreadable": len(found),
                    }
                )
                print(json.dumps(log[-1]), flush=True)
                continue
        err = proc.communicate()[1].decode(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"training failed (exit {proc.returncode}):\n{err[-2000:]}")
        break
    final = "ae.safetensors" if args.trainer == "ae" else "ldm.safetensors"
    a = read_checkpoint(ref / final).tensors
    b = read_checkpoint(run / final).tensors
    differing = sorted(k for k in a if k not in b or not torch.equal(a[k], b[k]))
    record = {
        "trainer": args.trainer,
        "steps": args.steps,
        "kills": kills,
        "resumes": resumes,
        "unreadable_files": bad,
        "tensors": len(a),
        "differing_tensors": differing[:10],
        "identical": not differing and a.keys() == b.keys(),
        "reference_seconds": round(ref_s, 1),
        "startup_seconds": round(startup_s, 1),
        "log": log,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "log"}))


if __name__ == "__main__":
    main()
