#!/usr/bin/env bash
# Idempotent setup: a project-local .venv with the project, its test and notebook extras.
# Re-running is a no-op unless pyproject.toml or this script changed.
#   DQE_TORCH_SPEC   torch requirement installed first (default: torch==2.13.0, the
#                    CPU build on these machines; on a GPU machine e.g. "torch==2.13.0"
#                    from the CUDA index, or leave your existing torch in place)
#   PYTHON           interpreter used to create the venv (default python3.11, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi

stamp=.venv/.dqe-setup-stamp
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi

echo "[setup] installing dependencies (first run takes a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "${DQE_TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[test,notebook]"
echo "$want" > "$stamp"
echo "[setup] done"
