#!/usr/bin/env bash
# add vs crossattn vs tokens on builtin:shapes at equal budget, scored by the shapes checker.
# Usage (venv active): bash bench/shapes_compare.sh   -> runs/shapes-*/ and bench/results/shapes_compare.json
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f runs/shapes-ae/ae.safetensors ]] || ldmctl train-ae --preset small --config ldmctl/recipes/demo-ae.toml \
    --max-steps 2000 --save-every 500 --set train.lr_schedule=constant --out runs/shapes-ae
for c in add crossattn tokens; do
  [[ -f runs/shapes-$c/ldm.safetensors ]] || /usr/bin/time -f "$c: %e s wall" ldmctl train-ldm --preset small \
      --config docs/recipes/shapes-$c.toml --ae runs/shapes-ae/ae.safetensors --out runs/shapes-$c
done
python bench/shapes_score.py runs/shapes-add/ldm.safetensors runs/shapes-crossattn/ldm.safetensors \
    runs/shapes-tokens/ldm.safetensors --n 500 --out bench/results/shapes_compare.json --grid-dir docs/images
