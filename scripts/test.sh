#!/usr/bin/env bash
# Set up, lint (ruff: style, imports, line length 100; import-linter: layer contracts),
# then run the whole test suite (GPU tests skip without CUDA). Extra arguments go to
# pytest, e.g. -m "not slow" or -k mining
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Both configurations are in pyproject.toml; a finding stops here.
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/lint-imports --no-cache
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
