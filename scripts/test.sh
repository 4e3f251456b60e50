#!/usr/bin/env bash
# The whole test suite. Installs what it needs first (idempotent): see scripts/bootstrap.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VENV_PY" -m pytest tests "$@"
