#!/usr/bin/env bash
# Set up .venv with the dev tools and run ruff + the test suite (CPU; Triton kernels in interpreter
# mode). Extra arguments go to pytest. Exit code 5 (nothing collected) is an error here too.
# Results go to outputs/test-reports/<run>.xml (junit; UNIDG_TEST_REPORTS overrides the folder).
# With CI=true and no arguments (.ci/run): a second pytest run takes the slow tests
# (-m "slow and not gpu": the real TensorRT-RTX builds of the other attention forms, the
# reduced-depth FLUX export), then README's "What is verified where" table is checked against the
# tests and both runs' results (scripts/verification_table.py --check).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_venv.sh" "torch,export,kernels,text,ray,trt-rtx,quant" 1
cd "$ROOT"
export TRITON_INTERPRET=1 PYTHONHASHSEED=0
"$VENV/bin/ruff" check python tests
"$VENV/bin/ruff" format --check -q python tests || { echo "run: ruff format python tests" >&2; exit 1; }
REPORTS="${UNIDG_TEST_REPORTS:-$ROOT/outputs/test-reports}"
mkdir -p "$REPORTS"
run_pytest() {  # <run name> [pytest args…]
  local name="$1" rc=0
  shift
  rm -f "$REPORTS/$name.xml"
  "$VENV/bin/python" -m pytest -q --durations=15 --junitxml="$REPORTS/$name.xml" "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then echo "pytest collected no tests ($name run)" >&2; return 1; fi
  return "$rc"
}
if [ "${CI:-}" = "true" ] && [ "$#" -eq 0 ]; then
  rc=0
  run_pytest default || rc=1
  run_pytest slow -m "slow and not gpu" || rc=1
  "$VENV/bin/python" scripts/verification_table.py --check \
    --results "$REPORTS/default.xml" "$REPORTS/slow.xml" || rc=1
  exit "$rc"
fi
run_pytest default "$@"
