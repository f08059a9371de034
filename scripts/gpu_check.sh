#!/usr/bin/env bash
# The GPU check (issue 21), one script, under 10 minutes on one GPU: the device tests, the
# decode bench on the GPU, and the cpu-90m recipe trained on the GPU for a few epochs at
# the preset's batch and at a GPU-sized one (seconds per epoch, GPU utilisation).
# Prints one `name: value` line per figure (logs go to $OUT or /tmp/gpu-check).
#
#   bash scripts/gpu_check.sh --prepare   # here, on the CPU machine, once: the wheels the
#                                         # GPU image lacks (.whl) and amazon-toys' world +
#                                         # index (.gpu-check); both git-ignored
#   bash scripts/gpu_check.sh             # there: the device tool, carry [".whl", ".gpu-check"]
#   DEVICE=cpu QUICK=1 bash scripts/gpu_check.sh   # the same steps on a CPU, small (plumbing)
#
# Settings: DEVICE (cuda), EPOCHS (2, per training run), GPU_BATCH (256), QUICK (0).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  PY=${PYTHON:-.venv/bin/python}
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.gpu-check/' .git/info/exclude 2>/dev/null || echo '/.gpu-check/' >> .git/info/exclude
  wheels=${GPU_WHEELS_SCRIPT:-../shared/tools/gpu-wheels.sh}
  if [[ -f "$wheels" ]]; then bash "$wheels" .whl; else echo "no $wheels: the GPU image must have our stack"; fi
  src=${AMAZON_SRC:-../shared/data/amazon-toys}
  if [[ ! -d .gpu-check/index ]]; then
    "$PY" -m leadre data amazon --src "$src" --out .gpu-check/world --no-progress
    "$PY" -m leadre index build --world .gpu-check/world --out .gpu-check/index --preset small \
      --collab-weight 0.5 --no-progress
  fi
  du -sh .whl .gpu-check 2>/dev/null
  exit 0
fi

DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-2}
GPU_BATCH=${GPU_BATCH:-256}
QUICK=${QUICK:-0}
LOGS=${OUT:-/tmp/gpu-check}
mkdir -p "$LOGS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# The wheels are for the GPU image (Python 3.12); a CPU dry run uses the local venv as is.
if [[ "$DEVICE" != cpu ]] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel_install: failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
start=$(date +%s)

"$PY" - "$DEVICE" <<'EOF' || exit 1
import sys
import torch
from leadre_model.device import describe, resolve_device
d = resolve_device(sys.argv[1])
print(f"device: {describe(d)}")
print(f"torch: {torch.__version__}")
EOF

# 1. Device tests: every device path, CUDA included where present (they skip without it).
"$PY" -m pytest -q -p no:cacheprovider tests/leadre_model/test_devices.py \
  tests/leadre_model/llm/test_trie_tensors.py tests/leadre_model/llm/test_decode.py \
  > "$LOGS/tests.log" 2>&1
echo "device_tests_rc: $?"
echo "device_tests: $(tail -1 "$LOGS/tests.log")"

# 2. The decode bench on the device (its own figure lines).
bench_args=(--device "$DEVICE")
[[ "$QUICK" == 1 ]] && bench_args+=(--quick)
timeout 300 "$PY" bench/decode_bench.py "${bench_args[@]}" 2> "$LOGS/bench.err" | grep -v '^device:'
echo "decode_bench_rc: ${PIPESTATUS[0]}"

# 3. cpu-90m trained on the device: the preset's batch, then a GPU-sized batch.
if [[ -d .gpu-check/index ]]; then
  world=.gpu-check/world index=.gpu-check/index
else  # no prepared catalog: a synthetic one (its index needs the packaged text encoder)
  world=$LOGS/world index=$LOGS/index
  "$PY" -m leadre data synth --out "$world" --users 300 --ads 500 --no-progress > "$LOGS/data.log" 2>&1
  "$PY" -m leadre index build --world "$world" --out "$index" --preset tiny --no-progress >> "$LOGS/data.log" 2>&1
fi
util() {  # util LOG CMD...: run CMD (output to LOG); print the mean GPU utilisation (%)
  local log=$1 smi="" rc
  shift
  if command -v nvidia-smi > /dev/null && [[ "$DEVICE" == cuda* ]]; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$LOGS/util.txt" &
    smi=$!
  fi
  "$@" > "$log" 2>&1; rc=$?
  if [[ -n "$smi" ]]; then
    kill "$smi" 2> /dev/null
    awk '{ s += $1; n++ } END { if (n) printf "%.0f\n", s / n; else print "n/a" }' "$LOGS/util.txt"
  else
    echo "n/a"
  fi
  return $rc
}
for batch in preset "$GPU_BATCH"; do
  args=(--world "$world" --index "$index" --out "$LOGS/model-$batch" --preset cpu-90m --no-dpo
        --device "$DEVICE" --epochs "$EPOCHS" --no-progress)
  [[ "$batch" != preset ]] && args+=(--batch-size "$batch")
  u=$(util "$LOGS/train-$batch.log" timeout 240 "$PY" -m leadre train "${args[@]}")
  echo "train_rc_batch_$batch: $?"
  echo "gpu_util_pct_batch_$batch: $u"
  "$PY" - "$LOGS/model-$batch" "$batch" <<'EOF'
import json, sys
from pathlib import Path
log = Path(sys.argv[1]) / "train_log.json"
if log.exists():
    s = json.loads(log.read_text())
    t = s["timings"]
    print(f"train_s_per_epoch_batch_{sys.argv[2]}: {t.get('sft_s_per_epoch', float('nan')):.1f}")
    v = s.get("validation", {})
    if "best_recall@10" in v:
        print(f"valid_recall10_batch_{sys.argv[2]}: {v['best_recall@10']:.4f} "
              f"(epoch {v['best_epoch']}, {v['users']} users)")
    print(f"trained_on_batch_{sys.argv[2]}: {s.get('device', '')}")
EOF
done
echo "wall_s: $(( $(date +%s) - start ))"
