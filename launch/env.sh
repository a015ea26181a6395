# Sourced by launch/demo.sh and launch/test.sh: make .venv if missing and install the
# package (plus the extras named in VIT_DIST_EXTRAS) with the pinned torch/torchvision pair
# (VIT_DIST_CONSTRAINTS: another constraints file, e.g. launch/constraints-oldest.txt; use it
# with its own VIT_DIST_VENV).
# Re-running is cheap: a stamp keyed on pyproject.toml + constraints skips a finished install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VIT_DIST_VENV:-$ROOT/.venv}"
EXTRAS="${VIT_DIST_EXTRAS:-}"
PY_BOOT="${PYTHON:-python3}"
CONSTRAINTS="${VIT_DIST_CONSTRAINTS:-$ROOT/launch/constraints.txt}"

if ! "$PY_BOOT" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "vit_dist needs Python >= 3.10 (found: $("$PY_BOOT" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp_key="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" | sha256sum | cut -c1-16)-${EXTRAS:-base}"
stamp="$VENV/.vit_dist-installed-$stamp_key"
if [ ! -f "$stamp" ]; then
    echo "[setup] installing vit_dist${EXTRAS:+[$EXTRAS]} into $VENV (first run: a few minutes)"
    t0=$(date +%s)
    spec="$ROOT"
    [ -n "$EXTRAS" ] && spec="$ROOT[$EXTRAS]"
    # The constraints file pins the torch/torchvision pair so that no dependency can pull a second torch.
    "$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" -e "$spec"
    touch "$stamp"
    echo "[setup] installed in $(( $(date +%s) - t0 )) s"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
