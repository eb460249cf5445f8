#!/usr/bin/env bash
# The real-size edge benchmark (issue 13): an InternVL3-1B-shaped model (random weights, the real Qwen2.5
# tokenizer, one 448² tile = 256 image tokens) exported to fp32 / int8 / int4 and timed on this CPU beside
# PyTorch fp32, then profiled. Run it on a quiet machine: every figure is wall time.
#   bash benchmarks/edge_cpu_1b.sh [WORKDIR]   (default /tmp/edge_cpu_1b; ~20 GB disk, ~1 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/edge_cpu_1b}
OUT=benchmarks/results/edge_cpu_1b
mkdir -p "$W" "$OUT"
[ -f "$W/model/config.json" ] || svlm model tiny --family internvl --size internvl3-1b-shape --tokenizer real --out "$W/model" -q
[ -f "$W/data/info.json" ] || svlm data synth --out "$W/data" --n 160 --seed 7 -q
[ -d "$W/export/int4" ] || svlm export --model "$W/model" --out "$W/export" --quant fp32,int8,int4 --accuracy-level 4 -q
# Each model in its own process; 2 intra-op threads = this machine's cores.
svlm bench latency --models "$W/model" "$W/export/fp32" "$W/export/int8" "$W/export/int4" --data "$W/data" \
    --split test --images 4 --runs 8 --warmup 2 --threads 2 --max-new-tokens 32 --out "$OUT" -q
images=$(ls "$W"/data/image/*/*.jpg | head -n 4)
python -m benchmarks.edge_profile --packages "$W/export/fp32" "$W/export/int8" "$W/export/int4" \
    --images $images --runs 5 --threads 1 2 --image-tokens 256 64 --out "$OUT"
cp "$W/export/int4/manifest.json" "$OUT/int4_manifest.json"
