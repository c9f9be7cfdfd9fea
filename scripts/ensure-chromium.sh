#!/usr/bin/env bash
# Makes sure Debian's chromium is installed (headless screenshots of
# Flower's pages in the operations tests): installs it if missing. Prints
# its path.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium: not installed; installing from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >&2 && apt-get install -y -qq chromium >/dev/null; }
fi
command -v chromium
