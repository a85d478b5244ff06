"""Time ``reconstruct`` on large random images, whole or in tiles (docs/autoencoder.md).

    python bench/ae_large.py CKPT 1536x1536@0 1536x1536@512 4000x3000@512

Each argument is ``HxW@TILE`` (TILE 0: one piece; otherwise tiles of TILE pixels, overlap 64).
Prints wall time, microseconds per pixel and the peak resident memory of the process so far
(run the largest case last, or one case per process, to read its own peak).
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from ldmctl.autoencoder.apply import reconstruct
from ldmctl.checkpoint import load_autoencoder


def main() -> None:
    ae = load_autoencoder(sys.argv[1])
    for case in sys.argv[2:]:
        size, tile = case.split("@")
        h, w = map(int, size.split("x"))
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
        t0 = time.perf_counter()
        reconstruct(ae, x, tile=int(tile))
        dt = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{case}: {dt:.1f} s, {dt / (h * w) * 1e6:.1f} us/px, peak RSS so far {peak:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
