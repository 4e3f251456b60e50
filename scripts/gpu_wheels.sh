#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh, downloaded here (where PyPI is reachable) for a CUDA machine without network:
# Python 3.12 on x86_64 Linux with torch, numpy, transformers, pytest and pytest-xdist already installed (the
# typical case). Only what that machine lacks is fetched, without dependencies, so the folder stays small
# (target: at most 60 MB; av alone is about 35 MB). ComfyUI's sources go beside them as one .tar.xz.
#   bash scripts/gpu_wheels.sh [DIR]      (default .cache/gpu; then carry that folder to the GPU machine)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.cache/gpu}"
PY_VERSION="${GPU_PYTHON_VERSION:-3.12}"
source "$ROOT/scripts/bootstrap.sh" >/dev/null
mkdir -p "$DIR/whl"
# What ComfyUI 0.3.75 and the pack import beyond the preinstalled set, pinned to what the CPU venv runs.
PACKAGES=(av kornia kornia_rs spandrel einops pydantic pydantic_core pydantic_settings python_dotenv annotated_types
  typing_inspection sqlalchemy greenlet alembic mako torchsde trampoline open_clip_torch ftfy wcwidth scikit_video psutil)
pins=()
for p in "${PACKAGES[@]}"; do
  v=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null || true)
  pins+=("${p}${v:+==$v}")
done
"$VENV_PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d "$DIR/whl" "${pins[@]}"
# Exit status 1 is "a file changed while read" (a running ComfyUI writing its caches): the sources are whole.
tar cJf "$DIR/comfyui.tar.xz" -C "$(dirname "$COMFYUI_DIR")" --warning=no-file-changed --exclude=__pycache__ \
  --exclude='*.pyc' --exclude=user --exclude=output --exclude=input --exclude=temp "$(basename "$COMFYUI_DIR")" || [ $? -eq 1 ]
du -sh "$DIR/whl" "$DIR/comfyui.tar.xz"
total=$(du -sm "$DIR" | cut -f1)
[ "$total" -le 64 ] || echo "warning: $DIR is ${total} MB, over the 64 MB a device run can carry" >&2
