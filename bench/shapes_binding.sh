#!/usr/bin/env bash
# Issue 23, text binding on builtin:shapes: the 1,000-step pilots, the shipped model's run and
# their scores (docs/conditioning-comparison.md "Binding"). Usage (venv active, from the repo root):
#   bash bench/shapes_binding.sh pilots   # runs/q23/{A,B,C,D}, four 1-thread jobs side by side
#   bash bench/shapes_binding.sh ship     # runs/shapes-t2i (docs/recipes/shapes-t2i.toml), 2 threads
#   bash bench/shapes_binding.sh score    # bench/results/shapes_{binding_*,t2i*}.json; needs the previous model:
#       git show d7de58a:ldmctl/models/shapes-t2i.safetensors > runs/shapes-t2i-4k.safetensors
# Every LDM uses the autoencoder inside the shipped model (the demo-ae.toml recipe, 2,000 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
AE=ldmctl/models/shapes-t2i.safetensors
pilot() {  # NAME CONFIG [--set ...]
  local name=$1 config=$2; shift 2
  OMP_NUM_THREADS=1 ldmctl train-ldm --preset small --config "$config" --ae $AE --out-dir runs/q23/$name \
    --max-steps 1000 --set train.save_every=500 --set train.sample_every=100000 --set train.precision=fp32 "$@"
}
case "${1:-}" in
  pilots)
    mkdir -p runs/q23
    sed 's/encoder = "bert"/encoder = "minilm"/' docs/recipes/shapes-crossattn.toml > runs/q23-minilm.toml
    fast=(--set train.lr=1e-3 --set model.diffusion.min_snr_gamma=5)
    pilot A docs/recipes/shapes-crossattn.toml &
    pilot B docs/recipes/shapes-crossattn.toml "${fast[@]}" &
    pilot C runs/q23-minilm.toml "${fast[@]}" &
    pilot D docs/recipes/shapes-crossattn.toml "${fast[@]}" --set model.diffusion.prediction=v &
    wait ;;
  ship)
    OMP_NUM_THREADS=2 ldmctl train-ldm --preset small --config docs/recipes/shapes-t2i.toml --ae $AE \
      --out-dir runs/shapes-t2i ;;
  score)
    python bench/shapes_score.py runs/q23/{A,B,C,D}/ldm.safetensors --n 300 --out bench/results/shapes_binding_pilots.json
    python bench/shapes_score.py runs/shapes-t2i/checkpoints/step_00{02,04,06,08,10,12}000.safetensors \
      runs/shapes-t2i/ldm.safetensors --n 300 --out bench/results/shapes_binding_curve.json
    python bench/shapes_score.py $AE --n 500 --out bench/results/shapes_t2i.json
    python bench/shapes_score.py $AE runs/shapes-t2i-4k.safetensors --n 500 --prompt-seed 777 --out bench/results/shapes_t2i_seed777.json ;;
  *) echo "usage: bash bench/shapes_binding.sh pilots|ship|score" >&2; exit 2 ;;
esac
