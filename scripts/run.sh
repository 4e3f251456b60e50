#!/usr/bin/env bash
# The main job: set up (idempotent), train the shapes recipe (text-to-image on the captioned shapes world),
# run the shapes workflows in a headless ComfyUI, write out/shapes_*.png. --demo digits runs the digits demo
# (out/digits_grid.png); with CONTEXTDIFF_CHECKPOINT=/path/model.safetensors (or --checkpoint PATH) it runs
# text-to-image on that checkpoint instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VENV_PY" -m scripts.demo "$@"
