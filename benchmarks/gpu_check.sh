#!/usr/bin/env bash
# Everything that needs a GPU, as one script for a lent device (H100/H200, ~10-17 minutes):
# the `gpu`-marked tests, the ablation set (variants in parallel processes) and the
# speed/memory benchmarks need only torch, transformers, numpy, pandas, pyarrow, pillow
# (no Kedro or MLflow); the last step, the Kedro smoke run (benchmarks/gpu_smoke.py),
# needs the project installed and is skipped without it. Figures land in $OUT
# (default /tmp/dqe_gpu).
#   bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/dqe_gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

echo "== gpu tests"
timeout 120 "$PY" -m pytest -q -m gpu tests/model -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/pytest_gpu.txt"

echo "== ablations (6 variants x 3 seeds, parallel)"
timeout "${ABLATION_TIMEOUT:-300}" "$PY" benchmarks/run_ablations.py --seeds 0 1 2 --device cuda --jobs 6 \
  --workdir /tmp/dqe_ablations --out "$OUT/ablations.json" 2>&1 | grep -v Warning | tail -14

echo "== speed and memory"
timeout "${BENCH_TIMEOUT:-240}" "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_bench.json" 2>&1 | tail -40

echo "== smoke run of the real-data path (kedro; placeholder CIRR + FashionIQ, full-size random BLIP-2)"
if "$PY" -c "import kedro, kedro_mlflow" 2>/dev/null; then
  timeout "${SMOKE_TIMEOUT:-420}" "$PY" benchmarks/gpu_smoke.py --work /tmp/dqe_smoke --scale "${SMOKE_SCALE:-0.25}" 2>&1 | tail -40
  cp /tmp/dqe_smoke/smoke_report.json "$OUT/smoke_report.json" 2>/dev/null || true
else
  echo "skipped: kedro / kedro-mlflow not installed in this Python (pip install -e . first)"
fi
