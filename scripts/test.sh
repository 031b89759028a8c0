#!/usr/bin/env bash
# Set up .venv with the dev tools and run the whole test suite (CPU; Triton kernels in interpreter
# mode). Extra arguments go to pytest. Exit code 5 (nothing collected) is an error here too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_venv.sh" "torch,export,kernels,text,ray,trt-rtx,quant" 1
cd "$ROOT"
export TRITON_INTERPRET=1 PYTHONHASHSEED=0
"$VENV/bin/ruff" check python tests
"$VENV/bin/ruff" format --check -q python tests || { echo "run: ruff format python tests" >&2; exit 1; }
set +e
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
