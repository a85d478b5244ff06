#!/usr/bin/env bash
# Time and peak memory (max RSS) of `ldmctl superres` on this machine: 256 -> 1024 and 512 -> 2048.
# The input is a held-out photo (scikit-image astronaut, resized), so nothing here was trained on.
# Usage (venv active): bash bench/superres_speed.sh [MODEL]   (default: the shipped model)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python - "$tmp" <<'PY'
import sys
from ldmctl.data import holdout_photos
img = dict(holdout_photos())["astronaut"]
for side in (256, 512):
    img.resize((side, side), resample=3, reducing_gap=None).save(f"{sys.argv[1]}/in{side}.png")
PY
model=()
[[ $# -ge 1 ]] && model=(--model "$1")
for side in 256 512; do  # the defaults: dpmpp, 1 step, tile 64 / overlap 16 latent cells
  /usr/bin/time -f "in ${side}px -> out $((side * 4))px: %e s wall, peak RSS %M KB" \
    ldmctl superres "$tmp/in$side.png" -o "$tmp/out$side.png" "${model[@]}" > /dev/null 2> "$tmp/log"
  tail -1 "$tmp/log"
done
rm -rf "$tmp"
