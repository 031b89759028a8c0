# Shared by scripts/generate.sh and scripts/test.sh: create/refresh .venv and install unidg-rt.
# Re-installs only when pyproject.toml changed or an extra is missing (stamp file), so repeated
# runs (and switching between the two scripts) start fast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNIDG_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
EXTRAS="${1:-torch,export,kernels}"
WITH_DEV="${2:-0}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.unidg-stamp"   # "<pyproject sha256> <installed extras, sorted> <dev 0|1>"
HASH="$(sha256sum < "$ROOT/pyproject.toml" | cut -d' ' -f1)"
OLD_HASH="" OLD_EXTRAS="" OLD_DEV=0
if [ -f "$STAMP" ]; then read -r OLD_HASH OLD_EXTRAS OLD_DEV < "$STAMP" || true; fi
sorted_extras() { tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -; }
if [ "$OLD_HASH" = "$HASH" ]; then  # keep what is installed: switching scripts never reinstalls
  EXTRAS="$(printf '%s,%s' "$OLD_EXTRAS" "$EXTRAS" | sorted_extras)"
  [ "$OLD_DEV" = "1" ] && WITH_DEV=1
else
  EXTRAS="$(printf '%s' "$EXTRAS" | sorted_extras)"
fi
WANT="$HASH $EXTRAS $WITH_DEV"
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
