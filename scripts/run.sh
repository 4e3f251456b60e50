#!/usr/bin/env bash
# The main job: set up (idempotent), train the digits recipe, run the shipped workflow in a headless
# ComfyUI, write out/digits_grid.png. With CONTEXTDIFF_CHECKPOINT=/path/model.safetensors (or
# --checkpoint PATH) it runs text-to-image on that checkpoint instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VENV_PY" scripts/demo.py "$@"
