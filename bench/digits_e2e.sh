#!/usr/bin/env bash
# End-to-end digits LDM: train the first stage and the LDM (docs/recipes), then sample 64-image
# grids into docs/images/ and score 500 samples per sampler with FD_cls (bench/fd_digits.py).
# Needs Debian opencv-doc. Usage: bash bench/digits_e2e.sh [--skip-train]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != "--skip-train" ]]; then
  ldmctl train-ae --preset small --config docs/recipes/ae-kl-f4-digits.toml --out-dir runs/digits-ae
  ldmctl train-ldm --preset small --config docs/recipes/ldm-digits.toml --ae runs/digits-ae/ae.safetensors --out-dir runs/digits-ldm
fi
mkdir -p docs/images runs/digits-eval
ckpt=runs/digits-ldm/ldm.safetensors
ldmctl sample $ckpt --n 64 --sampler ddim --steps 50 --seed 0 --out-file docs/images/digits-ddim50.png
ldmctl sample $ckpt --n 64 --sampler dpmpp --steps 20 --seed 0 --out-file docs/images/digits-dpmpp20.png
for s in "ddim 50" "dpmpp 20"; do
  set -- $s
  /usr/bin/time -f "$1-$2: %e s" ldmctl sample $ckpt --n 500 --sampler $1 --steps $2 --seed 1 --batch-size 100 \
      --out-file runs/digits-eval/$1$2.png --save-tensor runs/digits-eval/$1$2.pt
done
[[ -f runs/digits-classifier.safetensors ]] || python bench/fd_digits.py --out runs/digits-classifier.safetensors
for s in ddim50 dpmpp20; do
  python bench/fd_digits.py --classifier runs/digits-classifier.safetensors --samples runs/digits-eval/$s.pt \
      | tee runs/digits-eval/$s.txt
done
