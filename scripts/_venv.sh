# Shared by scripts/generate.sh and scripts/test.sh: create/refresh .venv and install unidg-rt.
# Re-installs only when pyproject.toml changed or an extra is missing (stamp file), so repeated
# runs (and switching between the two scripts) start fast. Any failed install step ends the run
# (exit 1, pip's output on stderr): a missing extra never turns into skipped tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNIDG_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
EXTRAS="${1:-torch,export,kernels}"
WITH_DEV="${2:-0}"
# an extra pyproject.toml does not define is only a warning to pip: refuse it here
for extra in ${EXTRAS//,/ }; do
  sed -n '/^\[project.optional-dependencies\]/,/^\[/p' "$ROOT/pyproject.toml" | grep -q "^${extra} = " || {
    echo "install failed: extra '$extra' is not in pyproject.toml [project.optional-dependencies]" >&2
    exit 1
  }
done
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.unidg-stamp"   # "<pyproject sha256> <installed extras, sorted> <dev 0|1>"
HASH="$(sha256sum < "$ROOT/pyproject.toml" | cut -d' ' -f1)"
OLD_HASH="" OLD_EXTRAS="" OLD_DEV=0
if [ -s "$STAMP" ]; then read -r OLD_HASH OLD_EXTRAS OLD_DEV < <(cat "$STAMP"; echo); fi
sorted_extras() { tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -; }
if [ "$OLD_HASH" = "$HASH" ]; then  # keep what is installed: switching scripts never reinstalls
  EXTRAS="$(printf '%s,%s' "$OLD_EXTRAS" "$EXTRAS" | sorted_extras)"
  [ "$OLD_DEV" = "1" ] && WITH_DEV=1
else
  EXTRAS="$(printf '%s' "$EXTRAS" | sorted_extras)"
fi
# pip install -q "$@", its output without pip's "WARNING: Location" lines; pip's exit status decides
pip_install() {
  local log status=0
  log="$(mktemp)"
  "$VENV/bin/python" -m pip install -q "$@" > "$log" 2>&1 || status=$?
  sed '/^WARNING: Location/d' "$log" >&2
  rm -f "$log"
  if [ "$status" -ne 0 ]; then
    echo "install failed (pip exit $status): pip install $*" >&2
    return 1
  fi
}
WANT="$HASH $EXTRAS $WITH_DEV"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
  pip_install --upgrade "pip>=25.1" || exit 1
  # torch first, pinned: the local 2.13.0 CPU build satisfies every later range (no CUDA download)
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    pip_install "torch==2.13.0" || exit 1
  fi
  pip_install -e "$ROOT[$EXTRAS]" || exit 1
  if [ "$WITH_DEV" = "1" ]; then
    pip_install --group "$ROOT/pyproject.toml:dev" || exit 1
  fi
  "$VENV/bin/python" -c "import unidg_rt, torch" || { echo "install failed: unidg_rt / torch do not import" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
