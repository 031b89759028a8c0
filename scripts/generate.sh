#!/usr/bin/env bash
# Set up .venv (first run only) and generate one defect with the embedded default model and the
# bundled sample images. Extra arguments go to `unidg-rt generate` (e.g. --category scratch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_venv.sh" "torch" 0
cd "$ROOT"
# the default model is tiny: one thread is fastest and never stalls on a busy 2-core machine
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$VENV/bin/unidg-rt" generate --output "${UNIDG_OUTPUT:-outputs/quickstart.png}" "$@"
