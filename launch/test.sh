#!/usr/bin/env bash
# Set up .venv with the test extras (if needed), lint with ruff, type-check with mypy (its
# settings: [tool.mypy] in pyproject.toml), run the whole pytest suite.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k swin`.
set -euo pipefail
VIT_DIST_EXTRAS=test source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
echo "[test] ruff check + format check"
ruff check .
ruff format --check .
echo "[test] mypy"
mypy
echo "[test] pytest"
python -m pytest "$@"
