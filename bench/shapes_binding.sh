#!/usr/bin/env bash
# Issue 23, text binding on builtin:shapes: the 1,000-step pilots, the shipped model's run and
# their scores (docs/conditioning-comparison.md "Binding"). Usage (venv active, from the repo root):
#   bash bench/shapes_binding.sh pilots   # runs/q23/{A,B,C,D}, four 1-thread jobs side by side
#   bash bench/shapes_binding.sh ship     # runs/shapes-t2i (docs/recipes/shapes-t2i.toml), 2 threads (= run SL of pilots2)
#   bash bench/shapes_binding.sh pilots2  # runs/q23/{R1,R2,S1,S2} (1,500 steps, two 1-thread jobs at a time) and
#                                         # runs/q23/SL (10,000 steps, 2 threads), then their teacher-forced gaps
#   bash bench/shapes_binding.sh pilots3  # runs/q23/{T900,B2,SB,C1,CF}: the timestep band and a hard-negative contrast
#   bash bench/shapes_binding.sh expert   # builtin:shapes-layout (C1 exported), the switch timestep, its 500-prompt scores
#   bash bench/shapes_binding.sh score    # bench/results/shapes_{binding_*,t2i*}.json (see the case for the
#                                         # previous model it needs). The 14,000-step model's run is in git history
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
  pilots2)  # 2026-12-07: a pooled text embedding beside cross-attention (R), a causal text encoder (S)
    mkdir -p runs/q23
    python - <<'PY'
src = open("docs/recipes/shapes-t2i.toml").read()
enc = src[src.index("[model.conditioners.options]") : src.index("[model.unet]")]
add = '[[model.conditioners]]\nname = "add"\ndropout = 0.1\n' + enc
open("runs/q23/R.toml", "w").write(src.replace("[model.unet]", add + "[model.unet]", 1))
open("runs/q23/S.toml", "w").write(src.replace("max_length = 16\n", "max_length = 16\ncausal = true\n", 1))
PY
    long=(--max-steps 1500 --set train.save_every=500 --set train.keep_last=3)
    pos=(--set model.unet.position_embedding=true)
    pilot R1 runs/q23/R.toml "${long[@]}" & pilot R2 runs/q23/R.toml "${long[@]}" "${pos[@]}" & wait
    pilot S1 runs/q23/S.toml "${long[@]}" "${pos[@]}" & pilot S2 runs/q23/S.toml "${long[@]}" & wait
    OMP_NUM_THREADS=2 ldmctl train-ldm --preset small --config runs/q23/S.toml --ae $AE --out-dir runs/q23/SL \
      --max-steps 10000 --set train.save_every=2000 --set train.keep_last=5 "${pos[@]}"
    python bench/shapes_diagnose.py $AE runs/q23/{C,D,V,X,P,Q1,Q2,R1,R2,S1,S2}/ldm.safetensors \
      runs/q23/SL/checkpoints/step_00*.safetensors --gap-only ;;
  ship)
    OMP_NUM_THREADS=2 ldmctl train-ldm --preset small --config docs/recipes/shapes-t2i.toml --ae $AE \
      --out-dir runs/shapes-t2i ;;
  score)  # the shipped model against the previous one (14,000 steps, taken from git first:
           # git show 058d406:ldmctl/models/shapes-t2i.safetensors > runs/shapes-t2i-14k.safetensors)
    python bench/shapes_score.py runs/q23/{A,B,C,D}/ldm.safetensors --n 300 --out bench/results/shapes_binding_pilots.json
    python bench/shapes_score.py runs/q23/{P,R1,R2,S1,S2}/ldm.safetensors --n 300 --out bench/results/shapes_binding_pilots2.json
    python bench/shapes_score.py runs/shapes-t2i/checkpoints/step_00{02,04,06,08}000.safetensors \
      runs/shapes-t2i/ldm.safetensors --n 300 --out bench/results/shapes_binding_curve.json
    python bench/shapes_score.py $AE runs/shapes-t2i-14k.safetensors --n 500 --out bench/results/shapes_t2i.json
    python bench/shapes_score.py $AE runs/shapes-t2i-14k.safetensors --n 500 --prompt-seed 777 --out bench/results/shapes_t2i_seed777.json ;;
  pilots3)  # 2026-12-07 (later): where in the chain the relation is learnt. T900: only t >= 900 (cannot
            # sample); B2: the shipped model fine-tuned with half of each batch at t >= 750, plain v loss
            # (--init takes the run's loss settings: no min-SNR);
            # SB: the shipped recipe from scratch with the same bias; C1: the shipped recipe from scratch
            # plus the hard-negative contrast ([contrast]); CF: the shipped model fine-tuned with it.
            # 1,500 steps, one thread each (C1 was stopped after its step-1,000 checkpoint). T900, B2 and
            # C1, CF were run with an earlier script form of the same options (same losses, other draws).
    mkdir -p runs/q23
    t2i=(--preset small --config docs/recipes/shapes-t2i.toml --ae $AE --max-steps 1500
         --set train.save_every=500 --set train.keep_last=3)
    OMP_NUM_THREADS=1 ldmctl train-ldm "${t2i[@]}" --out-dir runs/q23/T900 \
      --set model.diffusion.timestep_bias_portion=1 --set model.diffusion.timestep_bias_begin=900 &
    OMP_NUM_THREADS=1 ldmctl train-ldm --init $AE --data builtin:shapes --size 32 --out-dir runs/q23/B2 \
      --max-steps 1500 --lr 3e-4 --batch-size 32 --set train.warmup_steps=100 --set train.save_every=500 \
      --set train.keep_last=3 --set train.sample_every=100000 --set model.diffusion.timestep_bias_portion=0.5 &
    wait
    OMP_NUM_THREADS=1 ldmctl train-ldm "${t2i[@]}" --out-dir runs/q23/SB \
      --set model.diffusion.timestep_bias_portion=0.5 --set model.diffusion.min_snr_gamma=0 &
    con=(--set contrast.weight=1 --set contrast.margin=0.01 --set 'contrast.swaps=["left:right","above:below"]')
    OMP_NUM_THREADS=1 ldmctl train-ldm "${t2i[@]}" --out-dir runs/q23/C1 "${con[@]}" &
    wait
    OMP_NUM_THREADS=1 ldmctl train-ldm --init $AE --data builtin:shapes --size 32 --out-dir runs/q23/CF \
      --max-steps 1500 --lr 3e-4 --batch-size 32 --set train.warmup_steps=100 --set train.save_every=500 \
      --set train.keep_last=3 --set train.sample_every=100000 --set model.diffusion.min_snr_gamma=5 "${con[@]}"
    cp runs/q23/CF/ldm.safetensors runs/q23/CF-1500.safetensors
    python bench/shapes_diagnose.py $AE runs/q23/{T900,B2,SB,C1,CF}/checkpoints/step_00*.safetensors \
      runs/q23/{T900,B2,SB,CF}/ldm.safetensors --gap-only --unweighted --bands 0,500,750,900,950,1000
    cp runs/q23/C1/checkpoints/step_0001000.safetensors runs/q23/C1-1000.safetensors
    ldmctl train-ldm --out-dir runs/q23/C1 --resume --max-steps 5000   # C1 continued (it had been stopped at 1,128)
    python bench/shapes_score.py runs/q23/C1-1000.safetensors runs/q23/C1/checkpoints/step_0004000.safetensors \
      runs/q23/C1/ldm.safetensors runs/q23/SB/ldm.safetensors runs/q23/CF-1500.safetensors --n 300 \
      --out bench/results/shapes_binding_pilots3.json ;;
  expert)  # the shipped pair: the contrast model C1 as the high-noise expert of the third model
    S=ldmctl/models/shapes-t2i.safetensors L=ldmctl/models/shapes-t2i-layout.safetensors
    ldmctl export runs/q23/C1/ldm.safetensors $L --prune-vocab --overwrite
    for sw in 300 400 500 700 850; do  # the switch timestep, on prompts no other figure uses
      python bench/shapes_score.py $S --expert $L --expert-from $sw --n 200 --prompt-seed 31337; done
    python bench/shapes_score.py $S --expert $L --n 500 --out bench/results/shapes_t2i_expert.json
    python bench/shapes_score.py $S --expert $L --n 500 --prompt-seed 777 --out bench/results/shapes_t2i_expert_seed777.json
    python bench/shapes_diagnose.py $L --probe-only --unweighted --bands 0,500,750,900,950,1000 ;;
  *) echo "usage: bash bench/shapes_binding.sh pilots|pilots2|pilots3|expert|ship|score" >&2; exit 2 ;;
esac
