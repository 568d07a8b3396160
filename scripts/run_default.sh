#!/usr/bin/env bash
# Quick start: set up, then run the whole training pipeline on the embedded default
# (generated benchmark + tiny BLIP-2-shaped backbone, CPU, a few minutes).
# Extra arguments go to `kedro run`, e.g. --params=training.loop.epochs=3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec .venv/bin/kedro run --pipelines=train "$@"
