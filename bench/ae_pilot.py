"""Pilot harness behind the f=4 autoencoder recipe choices (docs/autoencoder.md, "Why the linear shortcut").

A bare training loop (L1 only, bf16 autocast, Adam (0.9, 0.99), 50 warm-up steps, batch 8,
one thread, posterior mode instead of a sample) on ``builtin:photos`` crops, printing the mean L1
every 50 steps and, at the end, PSNR of 256x256 center crops of the photos in /tmp/ae/val
(five opencv-doc photos in neither the training nor the holdout set: basketball1, box_in_scene,
chicky_512, licenseplate_motion, pca_test1; copy them there first).

    SIZE=32 python bench/ae_pilot.py pca 1300 1e-3      # PCA-initialised linear shortcut
    SIZE=64 python bench/ae_pilot.py default 600 1e-3   # the plain small preset
    SIZE=64 python bench/ae_pilot.py pca 0              # the PCA start alone, no training

    SIZE=32 python bench/ae_pilot.py pca-l1 0           # closed-form mean-colour and PCA L1

Variants: default (small preset), pca (linear shortcut, set up inline here the way
AutoencoderKL.init_linear_shortcut does it), linskip (the same path, randomly initialised),
zeroinit (zero-initialised residual branches), plain (a 4-conv autoencoder without norms).
"""

import glob
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ldmctl.autoencoder import build_autoencoder
from ldmctl.config import AutoencoderConfig, DataConfig
from ldmctl.data.builtin import TRAIN_PHOTOS, PhotoDataset

torch.set_num_threads(1)
variant = sys.argv[1]
steps = int(sys.argv[2])
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
prec = sys.argv[4] if len(sys.argv) > 4 else "bf16"
SIZE = int(__import__("os").environ.get("SIZE", 32))
ds = PhotoDataset("p", TRAIN_PHOTOS, DataConfig(size=SIZE, channel_shuffle=True), seed=0, length=100000)
torch.manual_seed(0)
if variant == "pca-l1":  # closed-form reference: per-crop mean colour and k-component PCA of 4x4 patches
    X = torch.stack([ds[i]["image"] for i in range(2000)])
    print("mean-colour L1", float((X - X.mean((2, 3), keepdim=True)).abs().mean()))
    P = F.pixel_unshuffle(X, 4).permute(0, 2, 3, 1).reshape(-1, 48)
    mu = P.mean(0)
    _, _, V = torch.pca_lowrank(P - mu, q=48, center=False)
    for k in (3, 4, 8):
        R = (P - mu) @ V[:, :k] @ V[:, :k].T + mu
        print("PCA k", k, "L1", float((R - P).abs().mean()), "PSNR", float(10 * torch.log10(4 / ((R - P) ** 2).mean())))
    sys.exit()
if variant == "plain":

    class P(nn.Module):
        def __init__(s):
            super().__init__()
            s.e = nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(64, 64, 4, 2, 1),
                nn.SiLU(),
                nn.Conv2d(64, 128, 4, 2, 1),
                nn.SiLU(),
                nn.Conv2d(128, 4, 3, padding=1),
            )
            s.d = nn.Sequential(
                nn.Conv2d(4, 128, 3, padding=1),
                nn.SiLU(),
                nn.ConvTranspose2d(128, 64, 4, 2, 1),
                nn.SiLU(),
                nn.ConvTranspose2d(64, 64, 4, 2, 1),
                nn.SiLU(),
                nn.Conv2d(64, 3, 3, padding=1),
            )

        def forward(s, x):
            return s.d(s.e(x))

    m = P()
    fwd = m
else:
    m = build_autoencoder(AutoencoderConfig(base_channels=64, channel_mult=(1, 2, 2)))
    if variant == "zeroinit":
        for mod in m.modules():
            if hasattr(mod, "conv2") and hasattr(mod, "norm2"):
                nn.init.zeros_(mod.conv2.weight)
                nn.init.zeros_(mod.conv2.bias)
            if hasattr(mod, "proj_out"):
                nn.init.zeros_(mod.proj_out.weight)
                nn.init.zeros_(mod.proj_out.bias)

    def fwd(x):
        return m.decode(m.posterior(x).mode())

    if variant == "pca":
        X = torch.stack([ds[99999 - i]["image"] for i in range(64)])
        P = F.pixel_unshuffle(X, 4).permute(0, 2, 3, 1).reshape(-1, 48).double()
        mu = P.mean(0)
        C = (P - mu).T @ (P - mu) / len(P)
        ev, V = torch.linalg.eigh(C)
        ev, V = ev.flip(0)[:4], V.flip(1)[:, :4]
        sd = ev.sqrt()
        ein = nn.Conv2d(48, 4, 1)
        dout = nn.Conv2d(4, 48, 1)
        with torch.no_grad():
            ein.weight.copy_((V / sd).T.float()[:, :, None, None])
            ein.bias.copy_(-(mu @ V / sd).float())
            dout.weight.copy_((V * sd).float()[:, :, None, None])
            dout.bias.copy_(mu.float())
            for c in (m.encoder.conv_out, m.decoder.conv_out, m.quant_conv):
                nn.init.zeros_(c.weight)
                nn.init.zeros_(c.bias)
        m.ein, m.dout = ein, dout

        def fwd(x):
            z = m.quant_conv(m.encoder(x))[:, :4] + ein(F.pixel_unshuffle(x, 4))
            return m.decoder(m.post_quant_conv(z)) + F.pixel_shuffle(dout(z), 4)

    if variant == "linskip":
        ein = nn.Conv2d(48, 8, 1)
        dout = nn.Conv2d(4, 48, 1)
        m.ein, m.dout = ein, dout

        def fwd(x):
            h = m.quant_conv(m.encoder(x)) + ein(F.pixel_unshuffle(x, 4))
            z = h[:, :4]
            y = m.post_quant_conv(z)
            return m.decoder(y) + F.pixel_shuffle(dout(z), 4)


opt = torch.optim.Adam(m.parameters(), lr, betas=(0.9, 0.99))
t0 = time.time()
acc = []
for s in range(steps):
    for pg in opt.param_groups:
        pg["lr"] = lr * min(1, (s + 1) / 50)
    x = torch.stack([ds[s * 8 + i]["image"] for i in range(8)])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        r = fwd(x).float()
    loss = (r - x).abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    acc.append(loss.item())
    if (s + 1) % 50 == 0:
        print(variant, lr, prec, s + 1, round(sum(acc[-50:]) / 50, 4), f"{time.time() - t0:.0f}s", flush=True)

res = []
for f in sorted(glob.glob("/tmp/ae/val/*")):
    im = Image.open(f).convert("RGB")
    w, h = im.size
    im = im.crop(((w - 256) // 2, (h - 256) // 2, (w - 256) // 2 + 256, (h - 256) // 2 + 256))
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        r = fwd(x).float().clamp(-1, 1)
    r = torch.round((r + 1) * 127.5) / 255
    a = (x + 1) / 2
    res.append(float(10 * torch.log10(1 / ((a - r) ** 2).mean())))
print(variant, "SIZE", SIZE, "VAL", [round(v, 2) for v in res], "mean %.2f" % (sum(res) / len(res)))
