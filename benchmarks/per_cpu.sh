#!/usr/bin/env bash
# Every per-CPU figure docs/performance.md asks for, on the machine this runs on, in one go:
#
#   benchmarks/per_cpu.sh [OUT]      # OUT defaults to results/per_cpu/<cpu model>
#
# The CPU (lscpu, and qrank's feature checks and the paths they choose), the test suite, start
# to healthy on cold and on warm caches, long pairs against transformers, and workloads (a) and
# (b) of vs_transformers.py against tuned transformers (and OpenVINO where OPENVINO_PYTHON names
# a Python with the openvino runtime; see docs/performance.md, Method). One step at a time, so
# no two timed runs overlap; every command is appended to OUT/commands.txt as it starts.
#
# Settings (environment): MODEL (default models/qwen3-reranker-0.6b, made with random weights
# at the 0.6B shape if missing), TOKENIZER (../shared/qwen3-tokenizer), DTYPE (auto: what
# `qrank serve` picks on this CPU), LENGTHS (1k,2k,4k,8k,16k,32k), PAIRS (pairs per workload,
# 40), ROUNDS (2), SKIP_TESTS (set: leave out the test suite), OPENVINO_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/qwen3-reranker-0.6b}
TOKENIZER=${TOKENIZER:-../shared/qwen3-tokenizer}
DTYPE=${DTYPE:-auto}
LENGTHS=${LENGTHS:-1k,2k,4k,8k,16k,32k}
PAIRS=${PAIRS:-40}
ROUNDS=${ROUNDS:-2}

cpu=$(python -c "from qrank.kernels.cpu_features import cpu_model; print(cpu_model())")
slug=$(printf '%s' "$cpu" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
OUT=${1:-results/per_cpu/$slug}
mkdir -p "$OUT"

step() {  # run a command, noting it first
    echo "+ $*" | tee -a "$OUT/commands.txt"
    "$@"
}

[ -d "$MODEL" ] || step qrank make-test-model "$MODEL" --shape 0.6b --tokenizer "$TOKENIZER"

lscpu > "$OUT/lscpu.txt"
python -c "import json; from qrank.kernels import cpu_features; \
print(json.dumps(cpu_features.describe(), indent=1))" > "$OUT/cpu.json"
echo "CPU: $cpu"

if [ -z "${SKIP_TESTS:-}" ]; then
    step python -m pytest -q 2>&1 | tee "$OUT/tests.log"
fi

step python benchmarks/startup_time.py "$MODEL" --cold > "$OUT/startup_cold.txt"
tail -n 1 "$OUT/startup_cold.txt"
step python benchmarks/startup_time.py "$MODEL" > "$OUT/startup_warm.txt"
tail -n 1 "$OUT/startup_warm.txt"

step python benchmarks/long_pairs.py --model "$MODEL" --tokenizer "$TOKENIZER" --dtype "$DTYPE" \
    --lengths "$LENGTHS" --output-json "$OUT/long_pairs.json"

engines=qrank,tuned
openvino=()
if [ -n "${OPENVINO_PYTHON:-}" ]; then
    engines+=,openvino
    openvino=(--openvino-python "$OPENVINO_PYTHON" --openvino-dir "$OUT/openvino-ir")
fi
step python benchmarks/vs_transformers.py --model "$MODEL" --tokenizer "$TOKENIZER" \
    --dtype "$DTYPE" --engines "$engines" --tuned-batches 16 --pairs-a "$PAIRS" \
    --pairs-b "$PAIRS" --rounds "$ROUNDS" --rss-pairs 0 "${openvino[@]}" \
    --output-json "$OUT/vs_transformers.json"

echo "figures in $OUT"
