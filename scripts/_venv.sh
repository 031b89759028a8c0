# Shared by scripts/generate.sh and scripts/test.sh: create/refresh .venv and install unidg-rt.
# Re-installs only when pyproject.toml changed (stamp file), so repeated runs start fast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNIDG_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
EXTRAS="${1:-torch,export,kernels}"
WITH_DEV="${2:-0}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.unidg-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)-$EXTRAS-$WITH_DEV"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=25.1" 2>&1 | grep -v "^WARNING: Location" || true
  # torch first, pinned: the local 2.13.0 CPU build satisfies every later range (no CUDA download)
  "$VENV/bin/python" -c "import torch" 2>/dev/null || \
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
  if [ "$WITH_DEV" = "1" ]; then
    "$VENV/bin/python" -m pip install -q --group "$ROOT/pyproject.toml:dev" 2>&1 | grep -v "^WARNING: Location" || true
  fi
  "$VENV/bin/python" -c "import unidg_rt, torch" || { echo "install failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
