#!/usr/bin/env bash
# The whole test suite. Installs what it needs first (idempotent): see scripts/bootstrap.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
# Lint and format check first (configured in pyproject.toml); CONTEXTDIFF_LINT=0 skips them while editing.
if [ "${CONTEXTDIFF_LINT:-1}" = 1 ]; then
  "$VENV_PY" -m ruff check .
  "$VENV_PY" -m ruff format --check .
fi
exec "$VENV_PY" -m pytest tests "$@"
