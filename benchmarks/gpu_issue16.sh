#!/usr/bin/env bash
# Issue 16 on a fresh GPU machine, in one run of at most ~14.5 minutes including the
# install: the GPU figures (gpu_bench.py), the real-data smoke run through Kedro for CIRR
# and FashionIQ at full-size random BLIP-2 (gpu_smoke.py), the host-side feed rates
# (host_feed.py), and one JSON with the issue's ratios:
#   docs/figures/gpu_smoke_<device>.json   (and $OUT/gpu_smoke_<device>.json)
#
# The machine needs Python with a CUDA build of torch already installed (and transformers,
# numpy, pandas, pyarrow, pillow, as benchmarks/gpu_check.sh assumes); the script
# installs the project's other dependencies around that torch (pinned by a constraints
# file, so pip never replaces it) and then the project itself (--no-deps).
#
#   bash benchmarks/gpu_issue16.sh                       # online install from PyPI
#   WHEELHOUSE=/path/to/wheels bash benchmarks/gpu_issue16.sh   # offline install
#   bash benchmarks/gpu_issue16.sh --download-wheels DIR  # on a machine with internet:
#        fill DIR with the wheels an offline GPU machine needs (PY_VERSION, default 3.12)
#
#   CPU_CHECK=1 PYTHON=.venv/bin/python bash benchmarks/gpu_issue16.sh  # the script's
#        plumbing on any machine: tiny sizes on CPU, and `pip install --dry-run`
#
# Environment: PYTHON (default python3), OUT (default /tmp/dqe_issue16), ONLY (a subset
# of the steps gpu_bench install smoke_cirr smoke_fashioniq host_feed), SMOKE_SCALE
# (fraction of the real val/test sizes, default 0.25), TOTAL_BUDGET (seconds for the
# whole script, default 870), INSTALL_EXCLUDE (distributions not to install, default
# "kedro-viz faiss-cpu": neither is used by `kedro run --pipelines train`).
# Every step has its own time box (clipped to what is left of TOTAL_BUDGET) and its log in
# $OUT/<step>.log; a failed or timed-out step is recorded in $OUT/steps.tsv and in the
# JSON, and the remaining steps still run.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if [ "${1:-}" = "--download-wheels" ]; then
  DIR="${2:?usage: $0 --download-wheels DIR}"
  mkdir -p "$DIR"
  "$PY" benchmarks/gpu_issue16_report.py requirements --out-dir "$DIR" \
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
export PY OUT="${OUT:-/tmp/dqe_issue16}" SMOKE_WORK="${SMOKE_WORK:-/tmp/dqe_issue16_smoke}"
if [ -n "${CPU_CHECK:-}" ]; then  # tiny sizes on CPU, nothing installed
  BENCH_ARGS="--smoke --device cpu"
  export SMOKE_ARGS="--size tiny --device cpu --scale 0.01 --train-queries 48 --image-size 48
    --workers 2 --extraction-batch 64" PIP_DRY=--dry-run
  FEED_ARGS="--quick"
  FIG_DIR="$OUT"  # a CPU check is no figure of the project
else
  BENCH_ARGS=""
  export SMOKE_ARGS="--scale ${SMOKE_SCALE:-0.25}" PIP_DRY=""
  FEED_ARGS=""
  FIG_DIR=docs/figures
fi
TOTAL_BUDGET="${TOTAL_BUDGET:-870}"
RESERVE=15   # seconds kept for assembling the JSON
mkdir -p "$OUT"
STEPS="$OUT/steps.tsv"
# ONLY="step step ...": run only those steps (e.g. split over two calls of a machine whose
# commands are limited to 10 minutes); their timings are appended to an existing steps.tsv
# (the last line of a step wins) and the JSON is assembled from whatever $OUT holds.
ONLY="${ONLY:-}"
[ -z "$ONLY" ] && : > "$STEPS"
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

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
  "$PY" benchmarks/gpu_issue16_report.py requirements --out-dir "$OUT" \
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
  "$PY" benchmarks/gpu_smoke.py --work "$SMOKE_WORK" --benchmarks "$1" $SMOKE_ARGS \
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

# Budgets (seconds): bench 150, install 150, CIRR 240 (builds the 4.4 GB random
# backbone once), FashionIQ 210, host feed 75, JSON 15 = 840 of the 870 default.
# gpu_bench needs no Kedro: it runs first, so an install failure cannot cost it.
# shellcheck disable=SC2086
step gpu_bench 150 "$PY" benchmarks/gpu_bench.py $BENCH_ARGS --budget 130 \
  --out "$OUT/gpu_bench.json"
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
step host_feed 75 "$PY" benchmarks/host_feed.py $FEED_ARGS \
  --threads "$(($(nproc) > 8 ? 8 : $(nproc)))" --out "$OUT/host_feed.json"

echo "== assemble ($((SECONDS))s elapsed)"
"$PY" benchmarks/gpu_issue16_report.py assemble --gpu-bench "$OUT/gpu_bench.json" \
  --smoke cirr="$OUT/smoke_cirr.json" --smoke fashioniq="$OUT/smoke_fashioniq.json" \
  --host-feed "$OUT/host_feed.json" --steps "$STEPS" --out-dir "$OUT" --out-dir "$FIG_DIR"
echo "== done in $((SECONDS))s; everything is in $OUT"
