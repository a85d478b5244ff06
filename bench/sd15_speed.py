"""ldmctl vs diffusers at the Stable Diffusion 1.5 size, on the CPU, with random weights.

Nothing can be downloaded here, so the SD-1.5 *architecture* is built with random weights by
bench/random_sd.py (``sd15``): diffusers' ``UNet2DConditionModel`` (860 M parameters), ``AutoencoderKL``
(84 M) and transformers' ``CLIPTextModel`` with CLIP ViT-L/14's text config (123 M), a small CLIP BPE
vocabulary (token ids do not change the cost: the text encoder always reads 77 positions) and SD's
DDIM scheduler. The pipeline is
saved with ``save_pretrained`` and converted with ``ldmctl.convert.convert``; both tools then sample
from the same weights.

Every measurement runs in its own fresh Python process (so peak RSS is per tool and per run) and the
runs are interleaved (ldmctl, diffusers, ldmctl, diffusers, ...) so that a change of machine load hits
both alike: on a shared machine absolute seconds are noisy, the *ratios* are what count.

Measured per run (the child prints one JSON line):

* ``load_s``      checkpoint -> model ready (``load_ldm`` / ``StableDiffusionPipeline.from_pretrained``)
* ``unet_s``      wall time of each UNet call (forward hooks; one call per step, batch 2 = CFG)
* ``decode_s``    the autoencoder's decoder; ``text_s`` the text encoder
* ``image_s``     the whole sampling call (text, S steps, decode); ``total_s`` the process from start
* ``cpu_s``       user + system CPU seconds of the child; ``peak_rss_mb`` its VmHWM
The step time is also derived without hooks: (image_s at S=4 - image_s at S=2) / 2.

Precisions: ``fp32``; ``bf16`` = ldmctl ``--precision bf16`` (autocast to bfloat16, fp32 weights)
against diffusers under ``torch.autocast("cpu", torch.bfloat16)`` with fp32 weights (like with like,
tool ``diffusers``) and, as a second reference, diffusers loaded with ``torch_dtype=torch.bfloat16``
(tool ``diffusers-bf16w``: bf16 weights, no autocast).

Run::

    OMP_NUM_THREADS=2 .venv/bin/python bench/sd15_speed.py            # prepare, then fp32 and bf16
    .venv/bin/python bench/sd15_speed.py --precisions fp32 --repeats 2 --steps 2 4

Raw results: ``bench/results/sd15_speed.json`` (one record per run, plus the summary printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = Path("/tmp/sd15-random")
CKPT = Path("/tmp/sd15-random.safetensors")
OUT = ROOT / "bench" / "results" / "sd15_speed.json"
PROMPT = "a photo of a red cat on the square"


# ---------------------------------------------------------------- preparing the random SD-1.5 pipeline


def prepare(folder: Path, ckpt: Path) -> dict:
    """Build and save the random SD-1.5 pipeline (unless present), then convert it (unless present)."""

    info: dict = {}
    if not (folder / "model_index.json").is_file():
        from random_sd import build_pipeline  # bench/random_sd.py, beside this script

        t0 = time.perf_counter()
        pipe = build_pipeline(folder, "sd15")
        info["build_and_save_s"] = time.perf_counter() - t0
        info["parameters"] = {
            n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("unet", "vae", "text_encoder")
        }
        del pipe
    if not ckpt.is_file():
        from ldmctl.convert import convert

        t0 = time.perf_counter()
        info["convert"] = convert(folder, ckpt)
        info["convert_s"] = time.perf_counter() - t0
    return info


# ---------------------------------------------------------------- one measurement (child process)


def _timer(module, into: list[float], cpu: list[float] | None = None):
    """Forward hooks that append the wall time of each call of ``module`` to ``into`` (and the process's
    CPU seconds, all threads, to ``cpu``: less sensitive than wall time to other jobs on the machine)."""
    start: list[tuple[float, float]] = []

    def stop(*_) -> None:
        wall, proc = start.pop()
        into.append(time.perf_counter() - wall)
        if cpu is not None:
            cpu.append(time.process_time() - proc)

    module.register_forward_pre_hook(lambda *_: start.append((time.perf_counter(), time.process_time())))
    module.register_forward_hook(stop)


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmHWM: peak resident set), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def child_ldmctl(args: argparse.Namespace, rec: dict) -> None:
    """``ldmctl sample`` run in this process through the CLI's own entry point, timed by hooks."""
    import ldmctl.cli.sample as sample_cmd
    from ldmctl.cli import main

    original = sample_cmd.load_ldm

    def timed_load(*a, **kw):
        t0 = time.perf_counter()
        model = original(*a, **kw)
        rec["load_s"] = time.perf_counter() - t0
        _timer(model.unet, rec["unet_s"], rec["unet_cpu_s"])
        _timer(model.autoencoder.decoder, rec["decode_s"])
        for m in model.conditioners.modules():  # the transformers model inside clip-text (prompt and null)
            if type(m).__name__ == "CLIPTextModel":
                _timer(m, rec["text_s"])
        rec["image_t0"] = time.perf_counter()
        return model

    sample_cmd.load_ldm = timed_load
    argv = ["sample", str(args.ckpt), "--prompt", PROMPT, "--steps", str(args.steps), "--sampler", "ddim"]
    size = str(args.size)
    argv += ["--guidance", "7.5", "--n", "1", "--height", size, "--width", size, "--precision", args.precision]
    argv += ["--device", "cpu", "-o", f"/tmp/sd15-ldmctl-{os.getpid()}.png"]
    try:
        main(argv)
    except SystemExit as err:
        if err.code not in (0, None):
            raise
    rec["image_s"] = time.perf_counter() - rec.pop("image_t0")  # includes writing the PNG (ms)


def child_diffusers(args: argparse.Namespace, rec: dict) -> None:
    """``StableDiffusionPipeline.__call__``, fp32, under bf16 autocast, or with bf16 weights."""
    import torch
    from diffusers import StableDiffusionPipeline

    bf16_weights = args.tool == "diffusers-bf16w"
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        str(args.folder), torch_dtype=torch.bfloat16 if bf16_weights else torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    rec["load_s"] = time.perf_counter() - t0
    _timer(pipe.unet, rec["unet_s"], rec["unet_cpu_s"])
    _timer(pipe.vae.decoder, rec["decode_s"])
    _timer(pipe.text_encoder, rec["text_s"])
    autocast = args.precision == "bf16" and not bf16_weights
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = pipe(
            PROMPT,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            height=args.size,
            width=args.size,
        )
    rec["image_s"] = time.perf_counter() - t0
    rec["image_shape"] = list(out.images.shape)


def _eager_load(path: Path):
    """ldmctl's loading path before the lazy one (for --load-only): every tensor read into memory,
    the modules built with their random initialisation, then ``load_state_dict``."""
    from ldmctl.autoencoder import build_autoencoder
    from ldmctl.checkpoint import load_state, read_checkpoint
    from ldmctl.conditioning.compose import ConditionerSet
    from ldmctl.config import AutoencoderConfig, LDMConfig, from_dict
    from ldmctl.diffusion.io import split_tensors
    from ldmctl.diffusion.ldm import LatentDiffusion, latent_spec
    from ldmctl.unet import UNet

    ckpt = read_checkpoint(path, expect_kind="ldm")
    cfg = from_dict(LDMConfig, ckpt.config["ldm"])
    ae = build_autoencoder(from_dict(AutoencoderConfig, ckpt.config["autoencoder"]))
    parts = split_tensors(ckpt.tensors, str(path))
    load_state(ae, parts["ae"], "ae")
    unet = UNet(cfg.unet)
    load_state(unet, parts["ema"], "unet")
    conds = ConditionerSet(cfg.conditioners, latent_spec(cfg, ae))
    load_state(conds, parts["cond"], "cond")
    return LatentDiffusion(cfg, ae, unet, conds).eval()


def child_load(args: argparse.Namespace, rec: dict) -> None:
    """Loading alone: ``load_ldm`` (lazy, uninitialised modules) or the earlier eager path."""
    from ldmctl.diffusion.io import load_ldm

    t0 = time.perf_counter()
    model = load_ldm(args.ckpt) if args.tool == "load-lazy" else _eager_load(args.ckpt)
    rec["load_s"] = time.perf_counter() - t0
    rec["rss_after_load_mb"] = _status_mb("VmRSS")
    rec["parameters"] = sum(p.numel() for p in model.parameters())


def child_profile(args: argparse.Namespace, rec: dict) -> None:
    """One UNet step (batch 2 = CFG, 64x64 latent, 77 context tokens) after a warm-up step, under
    torch.profiler: the operators that take the time, grouped by kind, and the top ten."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    z, t, ctx = torch.randn(2, 4, 64, 64, generator=g), torch.tensor([500, 500]), torch.randn(2, 77, 768, generator=g)
    if args.tool == "profile-ldmctl":
        from ldmctl.conditioning import Cond
        from ldmctl.diffusion.io import load_ldm

        unet = load_ldm(args.ckpt).unet
        step = lambda: unet(z, t, Cond(context=ctx))  # noqa: E731
    else:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(str(args.folder), subfolder="unet").eval()
        step = lambda: unet(z, t, encoder_hidden_states=ctx).sample  # noqa: E731
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype, enabled=args.precision == "bf16"):
        step()
        t0, c0 = time.perf_counter(), time.process_time()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        rec["unet_s"].append(time.perf_counter() - t0)
        rec["unet_cpu_s"].append(time.process_time() - c0)
    totals: dict[str, float] = {}
    for ev in prof.key_averages():
        totals[ev.key] = ev.self_cpu_time_total / 1e6
    rec["top_ops_s"] = dict(sorted(totals.items(), key=lambda kv: -kv[1])[:15])
    rec["table"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def child(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    rec = {"tool": args.tool, "precision": args.precision, "steps": args.steps, "threads": torch.get_num_threads()}
    rec.update(unet_s=[], unet_cpu_s=[], decode_s=[], text_s=[])
    run = {"ldmctl": child_ldmctl, "load-lazy": child_load, "load-eager": child_load}.get(args.tool, child_diffusers)
    run = child_profile if args.tool.startswith("profile-") else run
    run(args, rec)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rec.update(cpu_s=ru.ru_utime + ru.ru_stime, peak_rss_mb=_peak_rss_mb(), total_s=time.perf_counter() - t_start)
    print("RESULT " + json.dumps(rec), flush=True)


# ---------------------------------------------------------------- the interleaved runs (parent)


def run_child(base: list[str], tool: str, precision: str, steps: int, threads: int) -> dict:
    cmd = base + ["--child", tool, "--precision", precision, "--steps-one", str(steps), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    load_before = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"tool": tool, "precision": precision, "steps": steps, "error": proc.stderr[-3000:]}
    rec = json.loads(lines[-1][len("RESULT ") :])
    rec["loadavg_before"], rec["loadavg_after"] = load_before, os.getloadavg()
    return rec


def summarise(records: list[dict]) -> dict:
    """Medians per (precision, tool), the derived step time, and ldmctl / reference ratios."""
    out: dict = {}
    good = [r for r in records if "error" not in r and r["tool"] in ("ldmctl", "diffusers", "diffusers-bf16w")]
    loads = [r for r in records if "error" not in r and r["tool"].startswith("load-")]
    for tool in sorted({r["tool"] for r in loads}):
        runs = [r for r in loads if r["tool"] == tool]
        out.setdefault("load", {})[tool] = {
            "runs": len(runs),
            "load_s": statistics.median(r["load_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "rss_after_load_mb": statistics.median(r["rss_after_load_mb"] for r in runs),
        }
    for prec in sorted({r["precision"] for r in good}):
        rows = {}
        for tool in sorted({r["tool"] for r in good if r["precision"] == prec}):
            runs = [r for r in good if r["precision"] == prec and r["tool"] == tool]
            steps_all = [s for r in runs for s in r["unet_s"][1:]] or [s for r in runs for s in r["unet_s"]]
            by_s = {
                s: statistics.median(r["image_s"] for r in runs if r["steps"] == s) for s in {r["steps"] for r in runs}
            }
            lo, hi = min(by_s), max(by_s)
            row = {
                "runs": len(runs),
                "load_s": statistics.median(r["load_s"] for r in runs),
                "unet_step_s": statistics.median(steps_all),
                "unet_step_cpu_s": statistics.median(
                    [s for r in runs for s in r["unet_cpu_s"][1:]] or [s for r in runs for s in r["unet_cpu_s"]]
                ),
                "unet_first_step_s": statistics.median(r["unet_s"][0] for r in runs),
                "step_s_from_difference": (by_s[hi] - by_s[lo]) / (hi - lo) if hi > lo else None,
                "decode_s": statistics.median(r["decode_s"][0] for r in runs),
                "text_s": statistics.median(sum(r["text_s"]) for r in runs),
                "image_s": {str(s): v for s, v in sorted(by_s.items())},
                "cpu_s": {str(s): statistics.median(r["cpu_s"] for r in runs if r["steps"] == s) for s in sorted(by_s)},
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            }
            rows[tool] = row
        if "ldmctl" in rows:
            for ref in [t for t in rows if t != "ldmctl"]:
                a, b = rows["ldmctl"], rows[ref]
                rows[f"ratio_ldmctl_over_{ref}"] = {
                    k: a[k] / b[k]
                    for k in ("load_s", "unet_step_s", "unet_step_cpu_s", "decode_s", "peak_rss_mb")
                    if b[k]
                } | {f"image_s@{s}": a["image_s"][s] / b["image_s"][s] for s in a["image_s"] if s in b["image_s"]}
        out[prec] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=FOLDER, help="the saved diffusers pipeline (made if missing)")
    ap.add_argument("--ckpt", type=Path, default=CKPT, help="its ldmctl conversion (made if missing)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument(
        "--bf16-weights",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time diffusers with torch_dtype=bfloat16 in the bf16 rounds",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (512: SD-1.5's)")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--load-repeats", type=int, default=2, help="pairs of ldmctl loads, lazy vs the earlier eager path")
    ap.add_argument("--load-only", action="store_true", help="only those loading pairs")
    ap.add_argument("--profile", action="store_true", help="only profile one UNet step of each tool (per precision)")
    ap.add_argument(
        "--child",
        choices=[
            "ldmctl",
            "diffusers",
            "diffusers-bf16w",
            "load-lazy",
            "load-eager",
            "profile-ldmctl",
            "profile-diffusers",
        ],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--steps-one", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.tool, args.steps = args.child, args.steps_one
        child(args)
        return
    base = [sys.executable, str(Path(__file__).resolve()), "--folder", str(args.folder), "--ckpt", str(args.ckpt)]
    base += ["--size", str(args.size)]
    info = prepare(args.folder, args.ckpt) if args.prepare_only else _prepare_in_child(base)
    if args.prepare_only:
        print("PREPARED " + json.dumps(info, default=str), flush=True)
        return
    records: list[dict] = []
    result = {
        "machine": {"cpus": os.cpu_count(), "uptime_before": _uptime(), "threads": args.threads},
        "size": args.size,
        "prepare": info,
        "prompt": PROMPT,
        "records": records,
    }
    for tool, prec, steps, rep in _plan(args):
        rec = run_child(base, tool, prec, steps, args.threads)
        rec["repeat"] = rep
        records.append(rec)
        _report(rec)
        result["summary"] = summarise(records)
        result["machine"]["uptime_after"] = _uptime()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result.get("summary", {}), indent=1), flush=True)


def _plan(args: argparse.Namespace) -> list[tuple[str, str, int, int]]:
    """(tool, precision, steps, repeat) in run order: the tools interleaved, A B (C) A B (C) ..."""
    plan = [(tool, "fp32", 0, rep) for rep in range(args.load_repeats) for tool in ("load-eager", "load-lazy")]
    if args.profile:
        return [(f"profile-{tool}", prec, 1, 0) for prec in args.precisions for tool in ("ldmctl", "diffusers")]
    if args.load_only:
        return plan
    for rep in range(args.repeats):  # a whole round (every precision) before the next repeat
        for prec in args.precisions:
            tools = ["ldmctl", "diffusers"] + (["diffusers-bf16w"] if prec == "bf16" and args.bf16_weights else [])
            plan += [(tool, prec, steps, rep) for steps in args.steps for tool in tools]
    return plan


def _prepare_in_child(base: list[str]) -> dict:
    """Prepare in a separate process so the parent (and its children's RSS) never holds a model."""
    proc = subprocess.run(base + ["--prepare-only"], capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PREPARED ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"preparing failed:\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("PREPARED ") :])


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _report(rec: dict) -> None:
    if "error" in rec:
        print(f"{rec['tool']:>16} {rec['precision']} S={rec['steps']}: FAILED\n{rec['error']}", flush=True)
        return
    if rec["tool"].startswith("profile-"):
        print(f"{rec['tool']} {rec['precision']}: one UNet step {rec['unet_s'][0]:.1f}s\n{rec['table']}", flush=True)
        return
    if rec["tool"].startswith("load-"):
        print(
            f"{rec['tool']:>16}: load {rec['load_s']:.1f}s  cpu {rec['cpu_s']:.0f}s  peak {rec['peak_rss_mb']:.0f} MB  "
            f"after load {rec['rss_after_load_mb']:.0f} MB  load avg {rec['loadavg_before'][0]:.1f}",
            flush=True,
        )
        return
    steps = " ".join(f"{s:.1f}" for s in rec["unet_s"])
    print(
        f"{rec['tool']:>16} {rec['precision']} S={rec['steps']}: load {rec['load_s']:.1f}s  unet [{steps}]s  "
        f"decode {rec['decode_s'][0]:.1f}s  image {rec['image_s']:.1f}s  cpu {rec['cpu_s']:.0f}s  "
        f"peak {rec['peak_rss_mb']:.0f} MB  load avg {rec['loadavg_before'][0]:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
