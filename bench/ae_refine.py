"""How much reconstruction the encoder leaves behind (docs/autoencoder.md, "Later checks").

For each 256x256 center crop of DATA (a folder or builtin:NAME, as ``eval-ae``), the latent from
the encoder (posterior mode) is optimised directly against the fixed decoder: Adam on the mean
squared error for STEPS steps. The PSNR before and after (outputs rounded to 8 bits, as
``eval-ae`` scores them) bounds what a better encoder could gain with this decoder.

    python bench/ae_refine.py runs/ae-kl-f4-finish/ae.safetensors --data VAL22DIR --steps 60 --limit 5

Also: ``--average A.safetensors B.safetensors ... --out C.safetensors`` writes the mean of
several checkpoints of one run (a stand-in for an EMA of the weights), with the first file's
metadata, so ``ldmctl eval-ae C.safetensors`` scores it.
"""

from __future__ import annotations

import argparse
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ldmctl.checkpoint import load_autoencoder
from ldmctl.eval.metrics import psnr, quantize_8bit
from ldmctl.eval.report import load_eval_images


def psnr_8bit(y: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR (dB) of ``y`` against ``x``, both in [-1, 1], as ``eval-ae`` scores it (8-bit ``y``)."""
    return psnr(quantize_8bit((y + 1) / 2), (x + 1) / 2).item()


def average(paths: list[str], out: str) -> None:
    """Write the element-wise mean of the checkpoints ``paths`` (same keys) to ``out``."""
    total: dict[str, torch.Tensor] = {}
    meta: dict[str, str] | None = None
    for path in paths:
        with safe_open(path, "pt") as f:
            meta = meta if meta is not None else f.metadata()
            for key in f.keys():
                t = f.get_tensor(key)
                t = t.double() if t.is_floating_point() else t
                total[key] = total[key] + t if key in total and t.is_floating_point() else t
    mean = {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}
    save_file(mean, out, metadata=meta)
    print(f"wrote the mean of {len(paths)} checkpoints to {out}")


def refine(ckpt: str, data: str, steps: int, lr: float, limit: int) -> None:
    ae = load_autoencoder(ckpt).eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    before, after = [], []
    for name, img in load_eval_images(data, size=256, limit=limit)[: limit or None]:
        x = img[None] * 2 - 1
        t0 = time.perf_counter()
        with torch.no_grad():
            z0 = ae.encode(x)
            before.append(psnr_8bit(ae.decode(z0), x))
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = ((ae.decode(z) - x) ** 2).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            after.append(psnr_8bit(ae.decode(z), x))
        print(
            f"{name[-28:]:28s} {before[-1]:6.2f} -> {after[-1]:6.2f} dB  ({time.perf_counter() - t0:.0f} s)", flush=True
        )
    print(f"mean over {len(before)}: {sum(before) / len(before):.2f} -> {sum(after) / len(after):.2f} dB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", nargs="+", help="autoencoder checkpoint (several with --average)")
    ap.add_argument("--data", help="folder or builtin:NAME to score (needed unless --average)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--limit", type=int, default=0, help="first N images (0: all)")
    ap.add_argument("--average", action="store_true", help="average the checkpoints into --out")
    ap.add_argument("--out", help="output file for --average")
    a = ap.parse_args()
    if a.average:
        if not a.out:
            ap.error("--average needs --out")
        average(a.ckpt, a.out)
    elif not a.data:
        ap.error("--data is needed")
    else:
        refine(a.ckpt[0], a.data, a.steps, a.lr, a.limit)


if __name__ == "__main__":
    main()
