#!/usr/bin/env bash
# bench/gpu_check.sh: ldmctl on one CUDA GPU, in a few minutes, offline (docs/scaling.md, "GPU check").
#
#   bench/gpu_check.sh [WORK_DIR]        # default: a fresh temporary folder
#
# Needs only the installed package (`ldmctl` on PATH, or LDMCTL=...; PYTHON=... for the checks)
# and one CUDA GPU: the data are built in (builtin:synthetic), the models trained here or shipped
# with the package. Every check prints one line, PASS, FAIL or SKIP; the script exits 1 if any
# check failed. What it checks:
#   1. train-ae and train-ldm (--preset tiny, class-conditional) on CUDA in bf16, train-ldm in fp16
#      too (train-ae has no gradient scaler, so it refuses fp16: checked as a usage error);
#   2. sample, superres, reconstruct/eval-ae and inpainting (sample --init-image --mask) on CUDA,
#      in every precision the command takes, and that the JSON report names the GPU;
#   3. CPU and CUDA outputs of the same checkpoint in fp32: sample --save-tensor on both devices,
#      largest |difference| <= TOL (default 1e-3) on images in [-1, 1]. The initial noise is drawn
#      on the CPU for every device, and fp32 runs without TF32 on CUDA, so the two differ only by
#      the order of float32 sums (about 1e-6 relative per operation, grown over the sampler's
#      steps); a wrong device, dtype or seed shows up as differences of order 0.1 to 1.
set -uo pipefail

LDMCTL=${LDMCTL:-ldmctl}
PY=${PYTHON:-python}
TOL=${TOL:-1e-3}
STEPS=${STEPS:-300} # training steps of each tiny model
WORK=${1:-$(mktemp -d -t ldmctl-gpu-check-XXXXXX)}
mkdir -p "$WORK/logs"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore
failed=0
checks=0

say() { printf '%-5s %s\n' "$1" "$2"; }
pass() { checks=$((checks + 1)); say PASS "$1"; }
fail() { checks=$((checks + 1)); failed=$((failed + 1)); say FAIL "$1"; }
skip() { say SKIP "$1"; }

# run NAME CMD...: run a command (5 min limit), its output in logs/NAME.log; PASS/FAIL with its time
run() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  timeout 300 "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    pass "$name ($(($(date +%s) - start)) s)"
  else
    fail "$name (exit $rc; last lines of $WORK/logs/$name.log:)"
    tail -n 4 "$WORK/logs/$name.log" | sed 's/^/      /'
  fi
  return $rc
}

# compare NAME A B TOL: two saved sample tensors agree to TOL (largest absolute difference)
compare() {
  local line
  if [ ! -f "$2" ] || [ ! -f "$3" ]; then
    fail "$1: an output is missing (a run above failed)"
    return
  fi
  line=$("$PY" - "$2" "$3" "$4" <<'EOF'
import sys, torch
a, b = (torch.load(p, weights_only=True).float() for p in sys.argv[1:3])
tol = float(sys.argv[3])
d = (a - b).abs()
ok = a.shape == b.shape and bool(torch.isfinite(a).all() and torch.isfinite(b).all()) and d.max().item() <= tol
print(f"{'ok' if ok else 'bad'} max |diff| {d.max().item():.3g}, mean {d.mean().item():.3g} (tolerance {tol:g})")
EOF
  )
  case "$line" in
  ok*) pass "$1: ${line#ok }" ;;
  *) fail "$1: ${line#bad }" ;;
  esac
}

# finite NAME TENSOR: a saved sample tensor is finite and inside [-1, 1]
finite() {
  if "$PY" -c "import sys, torch; x = torch.load(sys.argv[1], weights_only=True); \
sys.exit(0 if bool(torch.isfinite(x).all()) and x.abs().max() <= 1 else 1)" "$2"; then
    pass "$1: finite, in [-1, 1]"
  else
    fail "$1: non-finite or out-of-range values"
  fi
}

# last_loss NAME RUN_DIR: the last logged loss of a run is finite
last_loss() {
  local line
  line=$("$PY" - "$2/log.jsonl" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
print(("ok" if losses and math.isfinite(losses[-1]) else "bad") + f" last loss {losses[-1] if losses else None}")
EOF
  )
  case "$line" in
  ok*) pass "$1: ${line#ok }" ;;
  *) fail "$1: ${line#bad }" ;;
  esac
}

echo "ldmctl GPU check in $WORK"
if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  fail "CUDA: torch.cuda.is_available() is False on this machine"
  exit 1
fi
"$PY" -c "import torch, ldmctl; p = torch.cuda.get_device_properties(0); \
print(f'      ldmctl {ldmctl.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), {p.name}, \
{p.total_memory / 2**30:.0f} GiB, bf16: {torch.cuda.is_bf16_supported()}')"

# --- 1. training on CUDA ----------------------------------------------------------------------
AE=$WORK/ae/ae.safetensors
TINY=(--preset tiny --data builtin:synthetic --max-steps "$STEPS" --device cuda)
run train-ae-bf16 "$LDMCTL" train-ae "${TINY[@]}" --precision bf16 --perceptual none --out-dir "$WORK/ae" &&
  last_loss train-ae-bf16 "$WORK/ae"
"$LDMCTL" train-ae "${TINY[@]}" --precision fp16 --out-dir "$WORK/ae-fp16" >"$WORK/logs/train-ae-fp16.log" 2>&1
if [ $? -eq 2 ] && grep -q "fp16" "$WORK/logs/train-ae-fp16.log"; then
  pass "train-ae-fp16: refused as a usage error (train-ae has no gradient scaler)"
else
  fail "train-ae-fp16: expected a usage error (see $WORK/logs/train-ae-fp16.log)"
fi
for p in bf16 fp16; do
  if [ -f "$AE" ]; then
    run "train-ldm-$p" "$LDMCTL" train-ldm "${TINY[@]}" --precision "$p" --ae "$AE" --cond class \
      --sample-every "$STEPS" --out-dir "$WORK/ldm-$p" && last_loss "train-ldm-$p" "$WORK/ldm-$p"
  else
    skip "train-ldm-$p: no autoencoder"
  fi
done
LDM=$WORK/ldm-bf16/ldm.safetensors

# --- 2. inference on CUDA ---------------------------------------------------------------------
SAMPLE=(--n 8 --steps 20 --seed 3 --label 1)
for ckpt in bf16 fp16; do
  [ -f "$WORK/ldm-$ckpt/ldm.safetensors" ] || continue
  for p in fp32 bf16 fp16; do
    out=$WORK/sample-$ckpt-cuda-$p
    run "sample-ldm-$ckpt-cuda-$p" "$LDMCTL" sample "$WORK/ldm-$ckpt/ldm.safetensors" "${SAMPLE[@]}" \
      --device cuda --precision "$p" -o "$out.png" --save-tensor "$out.pt" && finite "sample-ldm-$ckpt-cuda-$p" "$out.pt"
  done
done

"$PY" - "$WORK" <<'EOF'
import sys
from PIL import Image, ImageDraw
work = sys.argv[1]
img = Image.new("RGB", (48, 40), (30, 60, 200))  # a photo-like test image of an odd size
d = ImageDraw.Draw(img)
d.ellipse((6, 5, 30, 29), fill=(230, 200, 40))
d.rectangle((28, 12, 44, 36), fill=(200, 30, 30))
img.save(f"{work}/photo.png")
img.resize((16, 16)).save(f"{work}/init.png")
mask = Image.new("L", (16, 16), 0)
ImageDraw.Draw(mask).rectangle((4, 4, 11, 11), fill=255)  # white = repaint
mask.save(f"{work}/mask.png")
EOF
for p in fp32 bf16 fp16; do
  run "superres-cuda-$p" "$LDMCTL" superres "$WORK/photo.png" --device cuda --precision "$p" -o "$WORK/sr-cuda-$p.png"
done
if [ -f "$AE" ]; then
  run reconstruct-cuda-bf16 "$LDMCTL" reconstruct "$AE" "$WORK/photo.png" --device cuda --precision bf16 \
    --out-dir "$WORK/recon"
  if run eval-ae-cuda-bf16 "$LDMCTL" eval-ae "$AE" --data builtin:synthetic --size 16 --limit 8 --metrics psnr,ssim \
    --device cuda --precision bf16 --json "$WORK/eval-ae.json"; then
    if "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); \
sys.exit(0 if r['device'].startswith('cuda') and r['precision'] == 'bf16' else 1)" "$WORK/eval-ae.json"; then
      pass "eval-ae JSON: device and precision recorded"
    else
      fail "eval-ae JSON: device/precision missing or wrong in $WORK/eval-ae.json"
    fi
  fi
fi
"$LDMCTL" sample --help >"$WORK/logs/sample-help.log" 2>&1 # not piped into grep -q: pipefail would see SIGPIPE
if ! grep -q -- "--mask" "$WORK/logs/sample-help.log"; then
  skip "inpainting: this ldmctl's sample has no --init-image/--mask"
elif [ -f "$LDM" ]; then
  for dev in cuda cpu; do
    run "inpaint-$dev-fp32" "$LDMCTL" sample "$LDM" --init-image "$WORK/init.png" --mask "$WORK/mask.png" \
      --n 4 --steps 20 --seed 3 --label 1 --device "$dev" -o "$WORK/inpaint-$dev.png" --save-tensor "$WORK/inpaint-$dev.pt"
  done
  run inpaint-cuda-bf16 "$LDMCTL" sample "$LDM" --init-image "$WORK/init.png" --mask "$WORK/mask.png" \
    --n 4 --steps 20 --seed 3 --label 1 --device cuda --precision bf16 -o "$WORK/inpaint-cuda-bf16.png"
  [ -f "$WORK/inpaint-cpu.pt" ] && [ -f "$WORK/inpaint-cuda.pt" ] &&
    compare "inpainting, CPU vs CUDA (fp32)" "$WORK/inpaint-cpu.pt" "$WORK/inpaint-cuda.pt" "$TOL"
fi

# --- 3. the same checkpoint on the CPU and on CUDA, fp32 --------------------------------------
if [ -f "$LDM" ]; then
  for sampler in ddim dpmpp; do
    for dev in cpu cuda; do
      run "sample-$sampler-$dev-fp32" "$LDMCTL" sample "$LDM" "${SAMPLE[@]}" --sampler "$sampler" --device "$dev" \
        -o "$WORK/$sampler-$dev.png" --save-tensor "$WORK/$sampler-$dev.pt"
    done
    compare "tiny LDM, $sampler, CPU vs CUDA (fp32)" "$WORK/$sampler-cpu.pt" "$WORK/$sampler-cuda.pt" "$TOL"
  done
  [ -f "$WORK/sample-bf16-cuda-bf16.pt" ] &&
    compare "tiny LDM, CUDA bf16 vs CPU fp32 (bf16 tolerance, as tests/test_device.py)" "$WORK/ddim-cpu.pt" \
      "$WORK/sample-bf16-cuda-bf16.pt" 0.1
fi
SHIPPED=(--n 4 --steps 20 --seed 3 --prompt "a red circle above a blue square")
for dev in cpu cuda; do
  run "shipped-shapes-$dev-fp32" "$LDMCTL" sample "${SHIPPED[@]}" --device "$dev" -o "$WORK/shapes-$dev.png" \
    --save-tensor "$WORK/shapes-$dev.pt"
done
compare "shipped builtin:shapes model, CPU vs CUDA (fp32)" "$WORK/shapes-cpu.pt" "$WORK/shapes-cuda.pt" "$TOL"

echo "$checks checks, $failed failed; logs and outputs in $WORK"
[ "$failed" -eq 0 ]
