#!/usr/bin/env bash
# One prepared run on a CUDA machine without network access (issue 19): the host tests on the GPU, the sampler
# overhead, inversion + edit against plain sampling, and the shapes trainer's throughput; docs/gpu.md reports
# the device, torch, each figure and every failure. At most about 8 minutes (rehearsed on the CPU with --quick).
#
#   bash scripts/gpu_wheels.sh                    # here, with PyPI: wheels + ComfyUI into .cache/gpu (~60 MB)
#   bash scripts/gpu_check.sh [--device cuda] [--wheels .cache/gpu] [--tests "tests/host"] [--quick]
#   bash scripts/gpu_check.sh --device cpu --quick   # rehearsal here: small sizes, results under $OUT only
#
# Typical target: Python 3.12 with torch already installed. The wheels go into a scratch --target folder with
# --no-index --no-deps (nothing is downloaded); a stub comfyui_frontend_package lets the server start. With
# --device cuda the results are written into docs/ (commit docs/gpu.md, docs/benchmarks.md, docs/bench/*_cuda.json);
# a CPU rehearsal writes into $OUT (or a temporary folder) and leaves docs/ alone.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE=cuda WHEELS="$ROOT/.cache/gpu" TESTS="tests/host" QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --tests) TESTS="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device is cuda or cpu, not $DEVICE" >&2; exit 2 ;; esac
# $PYTHON first (the suite's rehearsal passes its own), then on the CPU the project's venv.
PY="${PYTHON:-python3}"
[ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ] && [ "$DEVICE" = cpu ] && PY="$ROOT/.venv/bin/python"
OUT="${OUT:-$(mktemp -d)}"; LOGS="$OUT/gpu-logs"; mkdir -p "$LOGS"
T0=$(date +%s); say() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*" | tee -a "$LOGS/steps.log"; }
cd "$ROOT"

# 1. Dependencies and ComfyUI, offline.
if [ -d "$WHEELS/whl" ] && ! "$PY" -c "import av, kornia, spandrel, pydantic_settings, sqlalchemy" 2>/dev/null; then
  SITE="$OUT/site"; mkdir -p "$SITE/comfyui_frontend_package/static"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/whl/*.whl > "$LOGS/pip.log" 2>&1 \
    || say "pip install failed: see pip.log"
  touch "$SITE/comfyui_frontend_package/__init__.py"
  echo '<html></html>' > "$SITE/comfyui_frontend_package/static/index.html"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${COMFYUI_DIR:-}" ]; then
  if [ -f "$ROOT/.cache/comfyui/main.py" ]; then export COMFYUI_DIR="$ROOT/.cache/comfyui"
  elif [ -f "$WHEELS/comfyui.tar.xz" ]; then tar xJf "$WHEELS/comfyui.tar.xz" -C "$OUT" && export COMFYUI_DIR="$OUT/comfyui"
  else say "no ComfyUI: set COMFYUI_DIR or run scripts/gpu_wheels.sh first"; exit 2; fi
fi
export CONTEXTDIFF_DEVICE="$DEVICE" PYTHONUNBUFFERED=1
if [ "$DEVICE" = cpu ]; then export CONTEXTDIFF_BENCH_DOCS="$OUT/docs"; mkdir -p "$OUT/docs/bench"; cp -r docs/bench/. "$OUT/docs/bench/"; cp docs/benchmarks.md "$OUT/docs/"; fi
DOCS="${CONTEXTDIFF_BENCH_DOCS:-$ROOT/docs}"
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'python', sys.version.split()[0])" | tee "$LOGS/env.txt"
[ "$DEVICE" = cuda ] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOGS/env.txt" 2>&1 || true; }

# --quick: a 64-channel UNet and small sizes, to rehearse the script (its figures then say nothing).
# Time limits (seconds) sum to about 8 minutes on a GPU: tests 180, overhead 90, edit 150, trainer 60.
if [ "$QUICK" = 1 ]; then SIZE=128 STEPS=4 REPEATS=2 TPS=4 TEST_S=900 OVER_S=900 EDIT_S=900 TRAIN_S=900
  export CONTEXTDIFF_BENCH_SMALL=1
else SIZE=512 STEPS=20 REPEATS=3 TPS=20 TEST_S=180 OVER_S=90 EDIT_S=150 TRAIN_S=60; fi
XDIST=(); "$PY" -c "import xdist" 2>/dev/null && [ "$DEVICE" = cuda ] && XDIST=(-n "${GPU_CHECK_WORKERS:-6}")

# 2. The suite's host tests on the device (ComfyUI without --cpu; trainer tests with --device cuda).
say "tests: $TESTS"
# shellcheck disable=SC2086
# SIGINT at the limit: pytest then stops and still prints what passed and failed so far.
timeout -s INT -k 30 "$TEST_S" "$PY" -m pytest $TESTS -q -rfE -p no:cacheprovider "${XDIST[@]}" > "$LOGS/pytest.log" 2>&1
say "tests rc=$? $(grep -E '(passed|failed|error).* in ' "$LOGS/pytest.log" | tail -1)"

# 3. Benchmarks, each bounded in time.
timeout "$OVER_S" "$PY" -m bench.sampler_overhead --size "$SIZE" --steps "$STEPS" --repeats "$REPEATS" > "$LOGS/sampler_overhead.log" 2>&1
say "sampler_overhead rc=$? $(grep -E '"median_ratio"' "$LOGS/sampler_overhead.log")"
timeout "$EDIT_S" "$PY" -m bench.gpu_report edit --size "$SIZE" --steps "$STEPS" > "$LOGS/edit.log" 2>&1
say "edit rc=$? $(tail -1 "$LOGS/edit.log")"
timeout "$TRAIN_S" "$PY" -m bench.train_step --part shapes --repeats 2 --throughput_steps "$TPS" > "$LOGS/train_throughput.log" 2>&1
say "train_throughput rc=$? $(tail -1 "$LOGS/train_throughput.log" | cut -c1-200)"

# 4. The report.
"$PY" -m bench.gpu_report write "$LOGS" --device "$DEVICE" > "$LOGS/report.log" 2>&1 || say "report failed: see report.log"
mkdir -p "$OUT/docs-out"; cp "$DOCS/gpu.md" "$DOCS/benchmarks.md" "$OUT/docs-out/" 2>/dev/null
cp "$DOCS"/bench/*_cuda.json "$OUT/docs-out/" 2>/dev/null
say "done: $DOCS/gpu.md (copies and logs under $OUT)"
cat "$DOCS/gpu.md" 2>/dev/null
