#!/usr/bin/env bash
# One command for a CUDA machine: install what is missing (never torch), run the GPU tests, the
# long-context benchmark on CUDA and a 50-step 8k training run; < 10 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh [--wheels DIR] [--python PY] [--out DIR] [--install-only] [--dry-run]
#   bash bench/gpu_check.sh --make-wheels DIR [--python-version 3.12]     # on a machine with internet
#
#   --wheels DIR      install missing packages only from this folder (pip --no-index): for offline boxes
#   --python PY       the interpreter that holds the machine's torch (default: python3)
#   --out DIR         logs and results (default: bench/out/gpu_check)
#   --install-only    stop after the install step (also works without a GPU)
#   --dry-run         show what pip would install, install nothing, stop
#   --make-wheels DIR download wheels for the GPU box's Python (--python-version, default 3.12) and stop
#   --peak-tflops X   the device's dense bf16 peak for MFU when its name is not in the table
#
# Installed packages are never upgraded unless a missing one needs a newer version; torch, triton,
# numpy and the nvidia-* / cuda-* packages are pinned to what is installed (pip fails rather than
# replace them). Steps and their limits: pytest -m gpu (4 min), the benchmark (5 min), the training
# run (5 min); each step's log is in --out, and a failed step does not stop the later ones.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=python3 WHEELS="" OUT=bench/out/gpu_check MODE=all PYVER=3.12 PEAK=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --install-only) MODE=install; shift ;;
    --dry-run) MODE=dry-run; shift ;;
    --make-wheels) MODE=wheels; WHEELS=$2; shift 2 ;;
    --python-version) PYVER=$2; shift 2 ;;
    --peak-tflops) PEAK=(--peak-tflops "$2"); shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if [[ $MODE == wheels ]]; then
  exec "$PY" bench/gpu_install.py wheels "$WHEELS" --python-version "$PYVER"
fi
if [[ -n $WHEELS && ! -d $WHEELS ]]; then
  echo "error: --wheels $WHEELS is not a folder" >&2; exit 2
fi
mkdir -p "$OUT"
T0=$SECONDS
log() { echo "[gpu_check $((SECONDS - T0))s] $*"; }

# ---------------------------------------------------------------- install
torch_version() { "$PY" -c "from importlib.metadata import version; print(version('torch'))" 2>/dev/null; }
BEFORE=$(torch_version) || { echo "error: $PY has no torch; install the CUDA build of torch for this machine first" >&2; exit 2; }
"$PY" bench/gpu_install.py plan "$OUT" --optional fla-core || exit 2
PIP=("$PY" -m pip --isolated install -c "$OUT/constraints.txt")
if [[ -n $WHEELS ]]; then PIP+=(--no-index --find-links "$WHEELS"); fi
[[ $MODE == dry-run ]] && PIP+=(--dry-run)
if [[ -s $OUT/missing.txt ]]; then
  log "installing: $(tr '\n' ' ' < "$OUT/missing.txt")"
  "${PIP[@]}" -r "$OUT/missing.txt" 2>&1 | tee "$OUT/install.log" | grep -E "^(Would install|Successfully|ERROR|Attempting uninstall)"
  if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
    echo "error: installing the missing packages failed (see $OUT/install.log); with --wheels, rebuild the" \
         "folder for this Python: bash bench/gpu_check.sh --make-wheels DIR --python-version X.Y" >&2
    exit 1
  fi
fi
if [[ -s $OUT/optional.txt ]]; then
  "${PIP[@]}" -r "$OUT/optional.txt" > "$OUT/install_optional.log" 2>&1 \
    && log "$([[ $MODE == dry-run ]] && echo would install || echo installed) $(tr '\n' ' ' < "$OUT/optional.txt")(fused WKV kernel)" \
    || log "note: $(tr '\n' ' ' < "$OUT/optional.txt")could not be installed: the fused WKV path is not checked"
fi
AFTER=$(torch_version)
if [[ $AFTER != "$BEFORE" ]]; then echo "error: torch changed from $BEFORE to $AFTER; this must not happen" >&2; exit 1; fi
log "torch $AFTER kept"
[[ $MODE != all ]] && exit 0

# ---------------------------------------------------------------- checks
"$PY" - <<'EOF' || exit 1
try:
    import torch
except Exception as err:
    raise SystemExit(f"error: torch does not import: {err}")
if not torch.cuda.is_available():
    raise SystemExit(f"error: torch {torch.__version__} sees no CUDA device")
from cross_encoder.rwkv5 import fused_available
p = torch.cuda.get_device_properties(0)
print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"fused WKV kernel: {'yes' if fused_available('cuda') else 'no (flash-linear-attention not importable)'}")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/  /'

FAILED=()
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  log "$name ..."
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  if [[ $rc -ne 0 ]]; then FAILED+=("$name (exit $rc)"); log "$name FAILED (exit $rc; last lines of $OUT/$name.log):"; tail -n 15 "$OUT/$name.log"
  else log "$name ok"; fi
}
step pytest_gpu 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
tail -n 3 "$OUT/pytest_gpu.log"
step bench_long_context 300 "$PY" bench/bench_long_context.py --device cuda --shape 24x1024 \
  --lengths 4096,8192,16384 --reps 3 --time-budget-s 60 --out "$OUT/results_long_context_cuda.md"
[[ -f $OUT/results_long_context_cuda.md ]] && sed -n '/## Every case/,/## Targets/p' "$OUT/results_long_context_cuda.md"
step train_8k 300 "$PY" bench/gpu_train_check.py --out "$OUT/train" --steps 50 --ctx 8192 "${PEAK[@]}"
[[ -f $OUT/train/train_check.md ]] && cat "$OUT/train/train_check.md"

log "done in $((SECONDS - T0)) s; results in $OUT"
if [[ ${#FAILED[@]} -gt 0 ]]; then echo "failed: ${FAILED[*]}" >&2; exit 1; fi
