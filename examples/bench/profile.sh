#!/usr/bin/env bash
# Profiles the framework's hot path with valgrind (perf has no hardware
# counters on this VM: `perf stat -e instructions true` says <not supported>).
#
#   bash examples/bench/profile.sh [N]      # N measured tasks (default 3000)
#
# Builds the examples in release mode with line tables into
# target/bench-profile, then, against the RabbitMQ at $BROKER_URL:
#   worker.cg        callgrind of the example worker (client native), counters
#                    zeroed after warm-up, dumped after N round trips
#   raw-worker.cg    the same for the raw lapin worker (the baseline's worker)
#   client.cg        callgrind of the client (`bench --drive`: add.delay + get,
#                    window 100), worker native
#   worker.dhat.json / client.dhat.json   DHAT heap profiles of the same runs
#                    (allocation sites; startup included, hot sites dominate)
# Output in bench-results/profile/. Summaries: callgrind_annotate --inclusive=yes,
# and examples/bench/dhat_summary.py for the DHAT files.
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-3000}"
WINDOW=100
OUT="${OUT:-bench-results/profile}"
TARGET="${PROFILE_TARGET_DIR:-target/bench-profile}"
export BROKER_URL="${BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
mkdir -p "$OUT"
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --examples --target-dir "$TARGET" >&2
BIN="$TARGET/release/examples"
QUEUE="bench.profile.$$"
trap '"$BIN/bench" --delete "$QUEUE" >/dev/null 2>&1 || true' EXIT
"$BIN/bench" --declare "$QUEUE"

# Runs "$@" (a worker) under valgrind; drives N round trips; stops it.
profile_worker() { # name tool cmd...
  local name=$1 tool=$2; shift 2
  local out="$OUT/$name.dhat.json"
  [ "$tool" = callgrind ] && out="$OUT/$name.cg-final"
  valgrind --tool="$tool" --"$tool"-out-file="$out" "$@" >"$OUT/$name.$tool.log" 2>&1 &
  local vpid=$!
  "$BIN/bench" --drive "$QUEUE" --n "$WINDOW" --window "$WINDOW" >/dev/null
  [ "$tool" = callgrind ] && callgrind_control -z "$vpid" >/dev/null
  "$BIN/bench" --drive "$QUEUE" --n "$N" --window "$WINDOW"
  [ "$tool" = callgrind ] && callgrind_control -d "$vpid" >/dev/null
  kill -TERM "$vpid"; wait "$vpid" || true
  # The dump after the measured round trips is the one to read.
  if [ "$tool" = callgrind ]; then mv "$out.1" "$OUT/$name.cg"; rm -f "$out"; fi
}

# The client (bench --drive) under valgrind against a native worker.
profile_client() { # tool
  local tool=$1 out="$OUT/client.dhat.json"
  [ "$tool" = callgrind ] && out="$OUT/client.cg"
  "$BIN/worker" -Q "$QUEUE" -c 16 --loglevel warn &
  local wpid=$!
  BENCH_DRIVE_PAUSE=3 valgrind --tool="$tool" --"$tool"-out-file="$out" \
    "$BIN/bench" --drive "$QUEUE" --n "$N" --window "$WINDOW" >"$OUT/client.$tool.log" 2>&1 &
  local vpid=$!
  until grep -q "warmed up" "$OUT/client.$tool.log"; do sleep 0.2; done
  [ "$tool" = callgrind ] && callgrind_control -z "$vpid" >/dev/null
  wait "$vpid"
  tail -1 "$OUT/client.$tool.log"
  kill -TERM "$wpid"; wait "$wpid" || true
}

CG=(--collect-systime=nsec)
profile_worker worker callgrind "${CG[@]}" "$BIN/worker" -Q "$QUEUE" -c 16 --loglevel warn
profile_worker raw-worker callgrind "${CG[@]}" "$BIN/bench" --raw-consumer "$QUEUE" --prefetch 64
profile_client callgrind
profile_worker worker dhat "$BIN/worker" -Q "$QUEUE" -c 16 --loglevel warn
profile_client dhat
echo "profiles in $OUT (N=$N measured tasks, +$WINDOW warm-up in the callgrind windows)"
