#!/usr/bin/env bash
# Makes sure a Redis server answers on 127.0.0.1:6379 (the tests' result
# backend): installs it from Debian's packages if missing, starts it if down
# (no persistence: test data only), waits.
set -euo pipefail

answers() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

if command -v redis-cli >/dev/null 2>&1 && answers; then
  echo "redis: already running"
  exit 0
fi

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis: not installed; installing from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
fi

if ! answers; then
  echo "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

for _ in $(seq 1 60); do
  if answers; then
    echo "redis: up"
    exit 0
  fi
  sleep 0.5
done
echo "redis: 127.0.0.1:6379 does not answer PING within 30 s" >&2
exit 1
