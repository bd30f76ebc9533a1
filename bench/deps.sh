#!/usr/bin/env bash
# Installs what the benchmarks run against when it is missing: redis-server,
# redis-benchmark (Debian package redis-tools) and nutcracker (twemproxy).
# Idempotent; `apt-get update` only when a plain install fails, because it is
# slow and usually unnecessary on a machine that has installed before.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if have redis-server && have redis-benchmark && have nutcracker; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench/deps.sh: redis-server, redis-benchmark or nutcracker missing; run as root or: apt-get install -y redis-server redis-tools nutcracker" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(redis-server redis-tools nutcracker)
if ! apt-get install -y "${pkgs[@]}"; then
  apt-get update
  apt-get install -y "${pkgs[@]}"
fi
