#!/usr/bin/env bash
# Builds (or reuses) the git-ignored venv with the real Python Celery that
# the interop tests and benchmarks talk to. Prints the venv's python path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${INTEROP_VENV:-$PWD/.venv-interop}"
want="5.7.0"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import celery, sys; sys.exit(celery.__version__ != '$want')" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --disable-pip-version-check -q "celery==$want" >&2
echo "$venv/bin/python"
