#!/usr/bin/env bash
# GPU acceptance check (issue 15): one call on one GPU machine (an H100: ≤ 8 minutes), no network.
#
#   scripts/gpu-check.sh              on the GPU machine (a copy of the working tree; wheels in .wheels/)
#   scripts/gpu-check.sh --dry-run    CPU, tiny sizes, no installs: proves the wiring (tests/test_scripts.py)
#
# Steps, each time-boxed (`timeout`) inside one overall budget (GPU_CHECK_BUDGET_S, default 480 s);
# a failed or timed-out step is recorded and the next one still runs; the exit code is 1 when any
# step failed:
#   install    pip install --no-deps .wheels/* (never torch/triton/nvidia-*: the machine's torch stays),
#              pip install --no-deps -e . (falls back to PYTHONPATH=python, recorded)
#   gpu-tests  pytest -m gpu (real Triton kernels: TRITON_INTERPRET=0)
#   generate   `unidg-rt generate --device cuda` on the default model (the fast path by default) and
#              the same with --fast-path off; the JSON records both and their pixel difference
#   bench-512, bench-768
#              `unidg-rt bench --preset flux-fill` at 512x1024 and 768x1536 (per side 512 / 768):
#              ours fast path, ours without group bias, ours FP8 (where the GPU has FP8), ours eager,
#              diffusers eager, diffusers with the N×N mask; DiT step, 8 steps, reference mode e2e
#              (the JSON is rewritten after each variant: a timed-out size keeps what it finished)
#   ort-cuda   ONNX Runtime's CUDA EP on the default model (export, then generate --backend
#              onnxruntime --device cuda) where onnxruntime-gpu imports; else skipped with the reason
# Output: benchmarks/results/<gpu-name>.json (merged: environment, steps, results, targets), also
# copied to $OUT when set. Step logs: $OUT/gpu-check/ (or a temporary folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY_RUN=0
RESULTS_DIR="$ROOT/benchmarks/results"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --results-dir) RESULTS_DIR="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (use --dry-run, --results-dir DIR)" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ "$DRY_RUN" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || command -v python)"; fi
WORK="${GPU_CHECK_WORK:-}"
if [ -z "$WORK" ]; then
  if [ -n "${OUT:-}" ]; then WORK="$OUT/gpu-check"; else WORK="$(mktemp -d -t gpu-check.XXXXXX)"; fi
fi
mkdir -p "$WORK" "$RESULTS_DIR"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
START=$SECONDS
FAILED=0
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}" PYTHONHASHSEED=0
UNIDG=("$PY" -m unidg_rt)
log() { echo "[gpu-check $((SECONDS - START))s] $*" >&2; }

# step NAME SECONDS CMD...: run CMD under `timeout` (capped by what is left of the budget),
# output in $WORK/NAME.log; records NAME, status (ok / failed / timeout / not-run), rc and seconds.
step() {
  local name="$1" limit="$2" rc=0 t0=$SECONDS left
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 10 ]; then
    printf '%s\tnot-run\t-\t0\tno time left in the %ss budget\n' "$name" "$BUDGET" >> "$STEPS"
    log "$name: not run (budget spent)"; FAILED=1; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name: start (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; elif [ "$rc" -ne 0 ]; then status=failed; fi
  [ "$status" = ok ] || FAILED=1
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - t0))" "$(tail -n 1 "$WORK/$name.log" | tr '\t' ' ' | cut -c1-300)" >> "$STEPS"
  log "$name: $status (rc $rc, $((SECONDS - t0))s)"
  [ "$status" = ok ] || tail -n 20 "$WORK/$name.log" >&2
  return 0
}
skip() {  # skip NAME REASON
  printf '%s\tskipped\t-\t0\t%s\n' "$1" "$2" >> "$STEPS"
  log "$1: skipped — $2"
}

# ------------------------------------------------------------------ install (GPU machine only)
install_deps() {
  shopt -s nullglob
  local wheels=() w
  for w in .wheels/*.whl; do
    case "$(basename "$w")" in torch-*|triton-*|nvidia_*|nvidia-*) ;; *) wheels+=("$w") ;; esac
  done
  if [ "${#wheels[@]}" -gt 0 ]; then
    "$PY" -m pip install --no-deps --no-index --disable-pip-version-check -q "${wheels[@]}"
  else
    echo "no .wheels/*.whl: using what the machine has"
  fi
  if ! "$PY" -m pip install --no-deps --no-index --no-build-isolation --disable-pip-version-check -q -e .; then
    echo "editable install failed: running from PYTHONPATH=$ROOT/python"
  fi
  "$PY" -c "import torch, unidg_rt, typer, pydantic_settings, safetensors; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
}

if [ "$DRY_RUN" = 1 ]; then
  skip install "dry run: no installs"
  export TRITON_INTERPRET=1 OMP_NUM_THREADS=1
  DEVICE=cpu
  GEN=(--height 16 --width 16 --steps 1 --seed 0)
  BENCH=(--preset tiny --steps 1 --runs 1 --warmup 0 --device cpu --dtype float32 --threads 1)
  SIZES=(16 32)
  VARIANTS="ours-eager,ours-fast,ours-fast-nobias,ours-fast-fp8,diffusers-eager,diffusers-mask"
else
  export -f install_deps
  export PY
  step install 90 bash -c install_deps  # `timeout` runs programs, not shell functions
  export TRITON_INTERPRET=0  # tests/conftest.py defaults it to 1 (CPU); the GPU runs the real kernels
  DEVICE=cuda
  GEN=(--seed 0)
  BENCH=(--preset flux-fill --steps 8 --runs 5 --warmup 2)
  SIZES=(512 768)
  # the targets' numbers first: a bench cut short by its time limit keeps the variants it finished
  VARIANTS="diffusers-eager,ours-fast,ours-fast-fp8,ours-fast-nobias,ours-eager,diffusers-mask"
fi

# ------------------------------------------------------------------ pytest -m gpu
if [ "$DRY_RUN" = 1 ]; then
  step gpu-tests 120 "$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider
else
  step gpu-tests 100 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$WORK/gpu-tests.xml"
fi

# ------------------------------------------------------------------ fast path end to end
mkdir -p "$WORK/generate"
step generate 90 bash -c '"$@" --device '"$DEVICE"' -o '"$WORK"'/generate/fast.png \
  && "$@" --device '"$DEVICE"' --fast-path off -o '"$WORK"'/generate/eager.png' _ "${UNIDG[@]}" generate "${GEN[@]}"

# ------------------------------------------------------------------ bench (flux-fill sizes)
for size in "${SIZES[@]}"; do
  step "bench-$size" "$([ "$size" -ge 768 ] && echo 200 || echo 170)" "${UNIDG[@]}" bench "${BENCH[@]}" --size "$size" --variants "$VARIANTS" \
    --json "$WORK/bench-$size.json"
done

# ------------------------------------------------------------------ ONNX Runtime CUDA EP
ORT_REASON="$("$PY" - <<'EOF'
try:
    import onnxruntime as ort
except ImportError as exc:
    print(f"onnxruntime does not import ({exc}): carry onnxruntime-gpu in .wheels/ to run this step")
else:
    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have:
        print(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {have}): "
              "onnxruntime-gpu is not installed (its wheel is larger than one carry)")
EOF
)"
if [ -n "$ORT_REASON" ]; then
  skip ort-cuda "$ORT_REASON"
else
  mkdir -p "$WORK/ort"
  # export of the default model took 196 s on a busy 2-core CPU box: 150 s here, capped by the budget
  step ort-cuda 150 bash -c '"$@" export --out '"$WORK"'/ort/onnx \
    && "$@" generate --backend onnxruntime --onnx-dir '"$WORK"'/ort/onnx --device cuda -o '"$WORK"'/ort/ort.png' \
    _ "${UNIDG[@]}"
fi

# ------------------------------------------------------------------ merged JSON
log "writing the report"
REPORT_ARGS=(--work "$WORK" --results-dir "$RESULTS_DIR")
[ "$DRY_RUN" = 1 ] && REPORT_ARGS+=(--dry-run)
[ -n "${OUT:-}" ] && REPORT_ARGS+=(--copy-to "$OUT")
"$PY" "$ROOT/scripts/gpu_check_report.py" "${REPORT_ARGS[@]}"
log "done in $((SECONDS - START))s; failed steps: $FAILED"
exit "$FAILED"
