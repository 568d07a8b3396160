#!/usr/bin/env bash
# Every figure that needs a GPU, in one run on a fresh GPU machine (about 14.5 minutes
# with the install), written as docs/figures/gpu_smoke_<device>.json (and to $OUT).
#
# Default steps, each run by benchmarks/gpu_report.py or bench_host_feed.py:
#   device           device figures: matmul peak, ViT-g extraction, cached vs recompute
#                    training step, mining at 20k x 20k (torch + transformers, no Kedro)
#   install          the project's dependencies around the machine's CUDA torch (pinned by
#                    a constraints file, so pip never replaces it), then the project
#   smoke_cirr       the real-data path through `kedro run --env cirr --pipelines train`
#   smoke_fashioniq  the same for FashionIQ (placeholder data, full-size random BLIP-2)
#   host_feed        the host-side feed rates, with the CUDA copies
# Optional steps (name them in ONLY): gpu_tests (the `gpu`-marked tests of tests/model),
# ablations (benchmarks/run_ablations.py, 6 variants x 3 seeds in parallel processes).
#
#   bash benchmarks/gpu_run.sh                                # online install from PyPI
#   WHEELHOUSE=/path/to/wheels bash benchmarks/gpu_run.sh     # offline install
#   bash benchmarks/gpu_run.sh --download-wheels DIR          # on a machine with internet:
#        the wheels an offline GPU machine needs (PY_VERSION, default 3.12)
#   ONLY="gpu_tests ablations" bash benchmarks/gpu_run.sh     # the optional steps
#   CPU_CHECK=1 PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh   # the plumbing on any
#        machine: tiny sizes on CPU, `pip install --dry-run`, JSON to $OUT only
#
# The machine needs Python with a CUDA build of torch, transformers, numpy, pandas,
# pyarrow and pillow. Environment: PYTHON (default python3), OUT (default /tmp/dqe_gpu),
# ONLY (steps to run; their timings are appended to $OUT/steps.tsv, so one run can be
# split over several calls), SMOKE_SCALE (fraction of the real val/test sizes, default
# 0.25), TOTAL_BUDGET (seconds for the whole script, default 870), INSTALL_EXCLUDE
# (distributions not to install, default "kedro-viz faiss-cpu": `kedro run --pipelines
# train` uses neither). Every step has its own time box (clipped to what is left of
# TOTAL_BUDGET) and its log in $OUT/<step>.log; a failed or timed-out step is recorded in
# $OUT/steps.tsv and in the JSON, and the remaining steps still run.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
REPORT=benchmarks/gpu_report.py

if [ "${1:-}" = "--download-wheels" ]; then
  DIR="${2:?usage: $0 --download-wheels DIR}"
  mkdir -p "$DIR"
  "$PY" "$REPORT" requirements --out-dir "$DIR" \
    --exclude ${INSTALL_EXCLUDE-kedro-viz faiss-cpu} || exit 1
  "$PY" -m pip download --disable-pip-version-check -q -d "$DIR" --only-binary=:all: \
    --implementation cp --python-version "${PY_VERSION:-3.12}" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 -r "$DIR/requirements.txt" setuptools wheel || exit 1
  # The GPU machine already has these (and must keep its own): do not ship them.
  for pkg in ${SKIP_WHEELS-torch numpy pandas pyarrow pillow transformers tokenizers safetensors}; do
    rm -f "$DIR/${pkg}"-[0-9]*.whl
  done
  du -sh "$DIR"
  exit 0
fi

export PYTHONPATH=src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 KEDRO_DISABLE_TELEMETRY=true
export PY REPORT OUT="${OUT:-/tmp/dqe_gpu}" SMOKE_WORK="${SMOKE_WORK:-/tmp/dqe_gpu_smoke}"
if [ -n "${CPU_CHECK:-}" ]; then  # tiny sizes on CPU, nothing installed
  DEVICE_ARGS="--tiny --device cpu"
  export SMOKE_ARGS="--size tiny --device cpu --scale 0.01 --train-queries 48 --image-size 48
    --workers 2 --extraction-batch 64" PIP_DRY=--dry-run
  FEED_ARGS="--quick"
  ABLATION_ARGS="--seeds 0 --device cpu --jobs 1"
  FIG_DIR="$OUT"  # a CPU check is no figure of the project
else
  DEVICE_ARGS=""
  export SMOKE_ARGS="--scale ${SMOKE_SCALE:-0.25}" PIP_DRY=""
  FEED_ARGS=""
  ABLATION_ARGS="--seeds 0 1 2 --device cuda --jobs 6"
  FIG_DIR=docs/figures
fi
TOTAL_BUDGET="${TOTAL_BUDGET:-870}"
RESERVE=15   # seconds kept for assembling the JSON
mkdir -p "$OUT"
STEPS="$OUT/steps.tsv"
DEFAULT_STEPS="device install smoke_cirr smoke_fashioniq host_feed"
ONLY="${ONLY:-}"
[ -z "$ONLY" ] && : > "$STEPS"
wanted() { [[ " ${ONLY:-$DEFAULT_STEPS} " == *" $1 "* ]]; }

# step NAME WANT_SECONDS COMMAND...: run COMMAND under `timeout` (the whole process
# group), its output in $OUT/NAME.log; record NAME, seconds, exit status, time box.
step() {
  local name=$1 want=$2
  shift 2
  wanted "$name" || return 0
  local left=$((TOTAL_BUDGET - RESERVE - SECONDS))
  local box=$((want < left ? want : left))
  if ((box < 20)); then
    printf '%s\t0\tskipped\t%s\n' "$name" "$box" >> "$STEPS"
    echo "== $name: skipped (${left}s left of the budget)"
    return
  fi
  echo "== $name (time box ${box}s, $((SECONDS))s elapsed)"
  local t0=$SECONDS
  timeout --kill-after=10 "$box" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$((SECONDS - t0))" "$rc" "$box" >> "$STEPS"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
  echo "== $name: exit $rc in $((SECONDS - t0))s"
}

install() {
  local src=()
  if [ -n "${WHEELHOUSE:-}" ]; then src=(--no-index --find-links "$WHEELHOUSE"); fi
  # PEP 668: a machine's system Python may refuse pip; this is a throwaway machine.
  export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  "$PY" "$REPORT" requirements --out-dir "$OUT" \
    --exclude ${INSTALL_EXCLUDE-kedro-viz faiss-cpu} || return 1
  "$PY" -m pip install $PIP_DRY -q --progress-bar off "${src[@]}" \
    -c "$OUT/constraints.txt" -r "$OUT/requirements.txt" || return 1
  # The project itself, without touching dependencies; PYTHONPATH=src covers a failure.
  # (Not in CPU_CHECK: even a dry run of an editable install rewrites src/*.egg-info.)
  if [ -z "$PIP_DRY" ]; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
      || echo "pip install -e . failed: continuing with PYTHONPATH=src"
  fi
  "$PY" -c "import torch, kedro, kedro_mlflow, mlflow; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'kedro', kedro.__version__, 'mlflow', mlflow.__version__)"
}

smoke() {  # smoke BENCHMARK: one kedro run, its report kept as $OUT/smoke_BENCHMARK.json
  rm -f "$SMOKE_WORK/smoke_report.json"
  # shellcheck disable=SC2086  # SMOKE_ARGS is a list of words
  "$PY" "$REPORT" smoke --work "$SMOKE_WORK" --benchmarks "$1" $SMOKE_ARGS \
    && cp "$SMOKE_WORK/smoke_report.json" "$OUT/smoke_$1.json"
}
export -f install smoke  # `timeout` runs them in a child bash

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  free -g | head -2
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"
torch_before=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null)

# Time boxes (seconds) of the default steps: device 150, install 150, CIRR 240 (builds
# the 4.4 GB random backbone once), FashionIQ 210, host feed 75, JSON 15 = 840 of 870.
# The steps that need no Kedro run before the install, where its failure cannot cost them.
step gpu_tests 120 "$PY" -m pytest -q -m gpu tests/model -p no:cacheprovider
# shellcheck disable=SC2086
step device 150 "$PY" "$REPORT" device $DEVICE_ARGS --budget 130 --out "$OUT/device.json"
# shellcheck disable=SC2086
step ablations "${ABLATION_TIMEOUT:-300}" "$PY" benchmarks/run_ablations.py $ABLATION_ARGS \
  --workdir "${ABLATION_WORK:-/tmp/dqe_ablations}" --out "$OUT/ablations.json"
step install 150 bash -c install
torch_after=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null)
echo "torch before the install: $torch_before, after: $torch_after" | tee -a "$OUT/machine.txt"
if "$PY" -c "import kedro, kedro_mlflow" 2>/dev/null; then
  step smoke_cirr 240 bash -c "smoke cirr"
  step smoke_fashioniq 210 bash -c "smoke fashioniq"
else
  for name in smoke_cirr smoke_fashioniq; do
    if wanted "$name"; then
      printf '%s\t0\tno-kedro\t0\n' "$name" >> "$STEPS"
      echo "== $name skipped: kedro / kedro-mlflow not importable after the install"
    fi
  done
fi
# shellcheck disable=SC2086
step host_feed 75 "$PY" benchmarks/bench_host_feed.py $FEED_ARGS \
  --threads "$(($(nproc) > 8 ? 8 : $(nproc)))" --out "$OUT/host_feed.json"

echo "== assemble ($((SECONDS))s elapsed)"
"$PY" "$REPORT" assemble --device-figures "$OUT/device.json" \
  --smoke cirr="$OUT/smoke_cirr.json" --smoke fashioniq="$OUT/smoke_fashioniq.json" \
  --host-feed "$OUT/host_feed.json" --steps "$STEPS" --out-dir "$OUT" --out-dir "$FIG_DIR"
echo "== done in $((SECONDS))s; everything is in $OUT"
