#!/usr/bin/env bash
# Issue 19's GPU check as one prepared script for one short lease: one device command of under 600 s
# (at most 9.5 minutes of an H100 after start-up):
#   1. rollout decoding alone, generate against the fused step, InternVL3-1B shape, 64 sequences x 512 tokens;
#   2. the whole GRPO step (stage 4 at its real batching, 8 prompts x G=8 x 512) with the fused step and no
#      gradient checkpointing, beside plain trl: the issue's speed and 8 GiB targets.
# It prints a short table last; the JSON files land in OUT.
#   bash benchmarks/gpu_issue19.sh OUT
# On the device tool: carry [".gpu"] (the wheels the GPU machine lacks: ../shared/gpu/fetch_wheels.sh .gpu/wheels).
# A CPU dry run of the same path (figures meaningless): SHAPE=tiny PROMPTS=2 TOKENS=8 bash benchmarks/gpu_issue19.sh /tmp/o
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_issue19.sh OUT}
mkdir -p "$OUT"
if ! python3 -c "import trl, bitsandbytes, datasets" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/svlm_site .gpu/wheels/*.whl
  export PYTHONPATH=/tmp/svlm_site
fi
export PYTHONPATH=$PWD:$PWD/runtime${PYTHONPATH:+:$PYTHONPATH}
SHAPE=${SHAPE:-internvl3-1b-shape} PROMPTS=${PROMPTS:-8} TOKENS=${TOKENS:-512}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi: a dry run"
timeout 200 python3 -u -m benchmarks.rollout_decode --shape "$SHAPE" --batch $((PROMPTS * 8)) --tokens "$TOKENS" --repeats 3 \
  --out "$OUT" > "$OUT/rollout_decode.log" 2>&1
echo "rollout_decode exit $?"
timeout 330 python3 -u -m benchmarks.train_gpu \
  --cases "$SHAPE:fused:${PROMPTS}x$TOKENS:gc=0,$SHAPE:trl:${PROMPTS}x$TOKENS:st=0" \
  --steady 3 --reference-repeats 1 --fidelity-tokens 0 --sft-steps 0 --budget-s 250 \
  --workdir /tmp/svlm_train_gpu --out "$OUT" > "$OUT/train_gpu.log" 2>&1
echo "train_gpu exit $?"
tail -n 5 "$OUT/rollout_decode.log"
tail -n 12 "$OUT/train_gpu.log"
