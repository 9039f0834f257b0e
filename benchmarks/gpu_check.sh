#!/usr/bin/env bash
# GPU check for qrank (--device cuda): fidelity against the CPU float32 scores, then offline
# throughput at the 0.6B and 8B shapes. Sized for a 15-minute H200 lease; run it as one command:
#
#   TOK=path/to/qwen3-tokenizer OUT=results/gpu benchmarks/gpu_check.sh
#
# TOK: a folder with the Qwen3 tokenizer.json (on the device machine, carry a copy in an ignored
# folder: ../shared does not travel). OUT: where the log and JSON go. SKIP_8B=1 leaves out the
# 8B shape (writing its 16 GB of random weights takes a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
TOK=${TOK:-../shared/qwen3-tokenizer}
OUT=${OUT:-results/gpu}
MODELS=${MODELS:-/tmp/qrank-gpu-models}
mkdir -p "$OUT" "$MODELS"
export PYTHONUNBUFFERED=1
pip install --no-deps -q -e . 2>/dev/null || export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$OUT/gpu.txt"

# 1. Fidelity: CPU float32 is the reference (the CPU path matches transformers within 1e-5).
python -m qrank.cli make-test-model "$MODELS/tiny" --shape tiny --tokenizer "$TOK" --dtype float32
python -m qrank.cli make-test-model "$MODELS/0.6b" --shape 0.6b --tokenizer "$TOK"
python - "$MODELS" "$OUT" <<'PY' 2>&1 | tee "$OUT/fidelity.txt"
import json, sys
from qrank import Reranker
models, out = sys.argv[1], sys.argv[2]
queries = ["What is the capital of China?", "how do plants make food", "数据库索引是什么"]
docs = ["The capital of China is Beijing.", "Photosynthesis makes sugar from light.",
        "Gravity pulls.", "索引加快查询。", "lorem ipsum " * 300, "x"]
report = {}
for name in ("tiny", "0.6b"):
    ref = Reranker(f"{models}/{name}", dtype="float32", device="cpu", compile="off")
    want = [s for q in queries for s in ref.score(q, docs)]
    for dtype in ("float32", "bfloat16"):
        gpu = Reranker(f"{models}/{name}", dtype=dtype, device="cuda")
        got = [s for q in queries for s in gpu.score(q, docs)]
        err = max(abs(a - b) for a, b in zip(got, want))
        report[f"{name}/{dtype}"] = err
        print(f"{name} cuda {dtype}: max |score - cpu float32| = {err:.2e} over {len(got)} pairs")
json.dump(report, open(f"{out}/fidelity.json", "w"), indent=2)
assert report["tiny/float32"] < 1e-4 and report["tiny/bfloat16"] < 3e-2, report
PY

# 2. Throughput on the GPU: vLLM's random-rerank at --random-input 200 (shared query, 10 docs
#    per request) and a batch-size-1 workload of 200-token pairs.
bench() {  # model tag input_len batch
  python -m qrank.cli bench throughput "$1" --device cuda --dataset-name random-rerank \
    --random-input-len "$3" --random-batch-size "$4" --num-prompts 2000 \
    --max-num-batched-tokens 16384 --output-json "$OUT/throughput-$2.json" \
    2>&1 | grep -v Warning | tee -a "$OUT/throughput.txt"
}
bench "$MODELS/0.6b" 0.6b-shared 200 10
bench "$MODELS/0.6b" 0.6b-single 400 1
if [ -z "${SKIP_8B:-}" ]; then
  python -m qrank.cli make-test-model "$MODELS/8b" --shape 8b --tokenizer "$TOK"
  bench "$MODELS/8b" 8b-shared 200 10
  bench "$MODELS/8b" 8b-single 400 1
fi
echo "gpu check done: $OUT"
