#!/usr/bin/env bash
# Set up, check the import-layer contracts, then run the whole test suite (GPU tests
# skip without CUDA). Extra arguments go to pytest, e.g. -m "not slow" or -k mining
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The contracts are in pyproject.toml ([tool.importlinter]); a broken one stops here.
.venv/bin/lint-imports --no-cache
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
