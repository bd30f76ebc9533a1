#!/usr/bin/env bash
# Installs what the test suite needs beyond Go, and only what is missing, so a
# second run does nothing:
#   - redis-server, redis-sentinel, redis-cli (Debian: redis-server,
#     redis-sentinel, redis-tools). Tests start their own servers on free
#     ports, so the services Debian starts on install are stopped again.
#   - the Node packages of test/node/ when it has a package.json (client
#     compatibility tests with ioredis/BullMQ), plus node and npm for them.
#   - promtool (Debian: prometheus), which checks and unit-tests the alert
#     rules in deploy/prometheus; the Prometheus server the package starts
#     is stopped again.
#   - chromium, headless, which renders the status page in its test.
# Run by `make test`; safe to run by hand.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
node_dir="$repo_root/test/node"

log() { printf 'install-test-deps: %s\n' "$*"; }

# as_root runs a command as root: directly when we are root, through sudo when
# it exists; otherwise it says what to run and fails, because silently
# skipping would leave tests to fail later with a less clear message.
as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		log "need root to run: $*"
		log "run it as root (or install sudo), then run this script again"
		exit 1
	fi
}

# --- which Debian packages are missing --------------------------------------
packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || packages+=(redis-sentinel)
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
# twemproxy: the benchmark harness's own tests start it next to Redis.
command -v nutcracker >/dev/null 2>&1 || [[ -x /usr/sbin/nutcracker ]] || packages+=(nutcracker)
# Operations: promtool for the alert rules, chromium for the status page.
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if [[ -f "$node_dir/package.json" ]]; then
	command -v node >/dev/null 2>&1 || packages+=(nodejs)
	command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

installed_redis=false
installed_prometheus=false
if ((${#packages[@]} > 0)); then
	if ! command -v apt-get >/dev/null 2>&1; then
		log "missing: ${packages[*]}, and there is no apt-get here; install them with your package manager"
		exit 1
	fi
	if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
		log "missing: ${packages[*]}; this needs root. As root, run:"
		log "  apt-get update && apt-get install -y --no-install-recommends ${packages[*]}"
		log "then run this script again"
		exit 1
	fi
	log "installing ${packages[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# One update, and only because something is about to be installed: a
	# fresh Debian image has empty package lists.
	as_root apt-get update -qq
	as_root apt-get install -y -qq --no-install-recommends "${packages[@]}"
	for p in "${packages[@]}"; do
		[[ $p == redis-* ]] && installed_redis=true
		[[ $p == prometheus ]] && installed_prometheus=true
	done
fi

# --- stop the services Debian's postinstall started ------------------------
# Only right after installing them: a Redis that was already running before
# this script is someone's own, and not ours to stop.
stop_service() {
	local name=$1 pidfile=$2
	if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
		as_root systemctl stop "$name" >/dev/null 2>&1 || true
		as_root systemctl disable "$name" >/dev/null 2>&1 || true
	elif command -v service >/dev/null 2>&1; then
		as_root service "$name" stop >/dev/null 2>&1 || true
	fi
	# Without an init system the init script may not have stopped it: end
	# exactly the process Debian's config names in its pidfile, nothing found
	# by name.
	if [[ -s $pidfile ]]; then
		local pid
		pid=$(<"$pidfile")
		if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
			as_root kill "$pid" || true
		fi
	fi
}
if $installed_redis; then
	log "stopping the redis-server and redis-sentinel services started by the install (tests start their own)"
	stop_service redis-server /run/redis/redis-server.pid
	stop_service redis-sentinel /run/sentinel/redis-sentinel.pid
fi
if $installed_prometheus; then
	log "stopping the prometheus service started by the install (only promtool is used)"
	stop_service prometheus /run/prometheus/prometheus.pid
fi

# --- Node packages for client-compatibility tests ---------------------------
if [[ -f "$node_dir/package.json" ]]; then
	# A stamp of our own, newer than both manifests, means the install is
	# current (npm's own files are missing when there are no dependencies).
	stamp="$node_dir/node_modules/.install-test-deps.stamp"
	up_to_date=false
	if [[ -f $stamp && $stamp -nt "$node_dir/package.json" ]]; then
		if [[ ! -f "$node_dir/package-lock.json" || $stamp -nt "$node_dir/package-lock.json" ]]; then
			up_to_date=true
		fi
	fi
	if ! $up_to_date; then
		if [[ -f "$node_dir/package-lock.json" ]]; then
			log "npm ci in test/node"
			(cd "$node_dir" && npm ci --no-audit --no-fund)
		else
			log "npm install in test/node"
			(cd "$node_dir" && npm install --no-audit --no-fund)
		fi
		mkdir -p "$node_dir/node_modules"
		touch "$stamp"
	fi
fi

log "ok: $(redis-server --version | cut -d' ' -f1-3); $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3); $(chromium --version 2>/dev/null | head -1)"
