#!/usr/bin/env bash
# Makes sure a RabbitMQ broker accepts connections on 127.0.0.1:5672:
# installs it from Debian's packages if missing, starts it if down, waits.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open && rabbitmqctl -q await_startup >/dev/null 2>&1; then
  echo "rabbitmq: already running"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "rabbitmq: not installed; installing from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
fi

if ! port_open; then
  echo "rabbitmq: starting"
  rabbitmq-server -detached
fi

for _ in $(seq 1 120); do
  if port_open && rabbitmqctl -q await_startup >/dev/null 2>&1; then
    echo "rabbitmq: up"
    exit 0
  fi
  sleep 1
done
echo "rabbitmq: did not come up within 120 s" >&2
exit 1
