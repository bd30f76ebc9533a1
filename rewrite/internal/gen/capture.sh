#!/usr/bin/env bash
# capture.sh records COMMAND INFO and COMMAND DOCS of a real redis-server 7.0
# in rewrite/commands.json, the committed data the command table is generated
# from. The server is a throwaway: loopback only, no persistence, stopped at
# the end whatever happens.
#
# Usage: rewrite/internal/gen/capture.sh [output]
# Needs redis-server 7.0.x, redis-cli and jq. REDIS_SERVER and REDIS_CLI may
# point at other binaries.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$(cd "$here/../.." && pwd)/commands.json}
server=${REDIS_SERVER:-redis-server}
cli=${REDIS_CLI:-redis-cli}

die() { echo "capture.sh: $*" >&2; exit 1; }

command -v "$server" >/dev/null || die "$server not found"
command -v "$cli" >/dev/null || die "$cli not found"
command -v jq >/dev/null || die "jq not found"

# The table is the Redis 7.0 command set; a newer server would silently add
# commands that nobody has decided a policy for.
version=$("$server" --version | sed -n 's/.* v=\([0-9.]*\) .*/\1/p')
case $version in
7.0.*) ;;
*) die "need redis-server 7.0.x, $server is '${version:-unknown}'" ;;
esac

work=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

# A port is free if our own server manages to bind it. Another server already
# listening there would answer PING too, so we check the process id it reports.
start_server() {
	local try i
	for try in $(seq 1 20); do
		port=$((20000 + RANDOM % 40000))
		"$server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
			--dir "$work" --logfile "$work/redis.log" --daemonize no &
		pid=$!
		for i in $(seq 1 50); do
			if ! kill -0 "$pid" 2>/dev/null; then
				wait "$pid" 2>/dev/null || true
				pid=
				break
			fi
			if [ "$(rcli INFO server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')" = "$pid" ]; then
				return 0
			fi
			sleep 0.1
		done
		if [ -n "$pid" ]; then
			kill "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
			pid=
		fi
	done
	die "could not start $server on a free loopback port (log: $(cat "$work/redis.log" 2>/dev/null | tail -n 3))"
}

rcli() { "$cli" -h 127.0.0.1 -p "$port" "$@"; }

start_server

redis_version=$(rcli INFO server | tr -d '\r' | sed -n 's/^redis_version://p')
rcli -3 --json COMMAND INFO >"$work/info.json"
rcli -3 --json COMMAND DOCS >"$work/docs.json"

rcli SHUTDOWN NOSAVE >/dev/null 2>&1 || true
wait "$pid" 2>/dev/null || true
pid=

# Redis lists commands and subcommands in hash-table order, which changes from
# one server start to the next: sort both by name. -S sorts object keys (the
# DOCS maps); arrays whose order means something (arguments) are left alone.
jq -n -S \
	--arg version "$redis_version" \
	--slurpfile info "$work/info.json" \
	--slurpfile docs "$work/docs.json" \
	'{
		redis_version: $version,
		info: ($info[0] | map(.[9] |= sort_by(.[0])) | sort_by(.[0])),
		docs: $docs[0]
	}' >"$work/commands.json"

mv "$work/commands.json" "$out"
echo "capture.sh: wrote $out (redis $redis_version, $(jq '.info | length' "$out") commands)"
