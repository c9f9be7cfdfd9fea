#!/usr/bin/env bash
# Builds (or reuses) the git-ignored venv with the real Python Celery that
# the interop tests and benchmarks talk to, with the `redis` client for the
# Redis result backend, Flower (the monitor the operations tests drive) and
# OpenTelemetry's Celery instrumentation.
# Prints the venv's python path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${INTEROP_VENV:-$PWD/.venv-interop}"
want="5.7.0"
# celery[redis] 5.7.0 (kombu[redis]) asks for redis>=6.4.0,<9.0.0.
want_redis="8.2.0"
want_flower="2.2.0"
# OpenTelemetry's Celery instrumentation, for the trace tests.
want_otel_celery="0.66b2"
want_otel_sdk="1.45.2"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "
import sys, celery, redis, flower
from importlib.metadata import version
sys.exit(celery.__version__ != '$want' or redis.__version__ != '$want_redis'
         or flower.__version__ != '$want_flower'
         or version('opentelemetry-instrumentation-celery') != '$want_otel_celery'
         or version('opentelemetry-sdk') != '$want_otel_sdk')" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --disable-pip-version-check -q "celery[redis]==$want" "redis==$want_redis" \
  "flower==$want_flower" "opentelemetry-instrumentation-celery==$want_otel_celery" \
  "opentelemetry-sdk==$want_otel_sdk" >&2
echo "$venv/bin/python"
