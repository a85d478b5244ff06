#!/usr/bin/env bash
# The shipped photo autoencoder builtin:photo-f4 (issue 23; docs/autoencoder.md "The shipped photo
# autoencoder"): its two training stages, the export into the package, and the held-out scores.
# Usage (venv active, from the repo root; needs apt-get install opencv-doc):
#   bash bench/photo_f4.sh train   # runs/photo-f4, runs/photo-f4-finish, then ldmctl/models/photo-f4.safetensors
#   bash bench/photo_f4.sh score   # docs/results/photo-f4-{holdout,extra}.json
# Held out: builtin:photos-holdout + builtin:opencv-photos-holdout (astronaut, coffee, china, baboon,
# butterfly: never trained on, never used to choose settings) and five more opencv-doc photos that
# no autoencoder was trained on (the "validation" photos that chose the one-hour recipe's settings).
set -euo pipefail
cd "$(dirname "$0")/.."
OPENCV=/usr/share/doc/opencv-doc/examples/data
case "${1:-}" in
  train)
    ldmctl train-ae --preset small --config docs/recipes/ae-photo-f4.toml --out-dir runs/photo-f4
    ldmctl train-ae --preset small --config docs/recipes/ae-photo-f4-finish.toml \
      --init runs/photo-f4/ae.safetensors --out-dir runs/photo-f4-finish
    ldmctl export runs/photo-f4-finish/ae.safetensors ldmctl/models/photo-f4.safetensors --overwrite ;;
  score)
    extra=runs/photo-f4-extra  # a folder named for the report rows
    mkdir -p $extra
    for f in chicky_512.png pca_test1.jpg licenseplate_motion.jpg box_in_scene.png basketball1.png; do
      cp "$OPENCV/$f" "$extra/"
    done
    ldmctl eval-ae builtin:photo-f4 --data builtin:photos-holdout,builtin:opencv-photos-holdout --size 256 \
      --json docs/results/photo-f4-holdout.json
    ldmctl eval-ae builtin:photo-f4 --data $extra --size 256 --json docs/results/photo-f4-extra.json ;;
  *) echo "usage: bash bench/photo_f4.sh train|score" >&2; exit 2 ;;
esac
