#!/usr/bin/env bash
# Config changes through the API, as a client sees them:
#   - from `POST /api/v1/servers` to the new echo server answering, for each isolation level
#     (p50 and max of CYCLES add/remove cycles; target < 10 ms in-process);
#   - `PUT /api/v1/servers/{name}` of one server's `max_connections` on a host of SERVERS echo
#     instances holding SESSIONS sessions (p50 and max of CYCLES changes; target < 20 ms with no
#     session closed: every session echoes afterwards).
# Nothing here has a baseline to compare with: the numbers are absolute.
#
#   scripts/bench-config.sh          CYCLES=20 SERVERS=100 SESSIONS=10000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${CYCLES:-20}
servers=${SERVERS:-100}
sessions=${SESSIONS:-10000}

source scripts/lib.sh
build_release
work=$(mktemp -d)
host_pid=""
trap '[[ -n "$host_pid" ]] && kill -KILL "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT
ulimit -n 20000

echo 'shutdown_timeout = "1s"' > "$work/host.toml"
for i in $(seq "$servers"); do
  printf '\n[[servers]]\nname = "Echo%s"\ntype = "echo"\nlisteners = [{ ip = "Loopback", port = 0 }]\n' "$i" >> "$work/host.toml"
done
start_host "$work/host.toml" "$work"
loadgen() { "$release_dir"/loadgen --admin "$admin" "$@"; }
for isolation in none runtime process; do
  loadgen add-time --isolation "$isolation" --cycles "$cycles" > "$work/add-$isolation"
done
loadgen tune-time --server Echo1 --sessions "$sessions" --cycles "$cycles" > "$work/tune"
stop_host

echo
machine "$cycles cycles each"
echo
echo "| change | p50 (ms) | max (ms) |"
echo "|---|---|---|"
for isolation in none runtime process; do
  echo "| \`POST /api/v1/servers\` to first echo, isolation \`$isolation\` | $(field p50_ms < "$work/add-$isolation") | $(field max_ms < "$work/add-$isolation") |"
done
echo "| \`PUT\` of one server's \`max_connections\`, $servers servers, $sessions sessions open | $(field p50_ms < "$work/tune") | $(field max_ms < "$work/tune") |"
echo
echo "Sessions closed by the $cycles changes: $(field sessions_closed < "$work/tune") of $sessions."
