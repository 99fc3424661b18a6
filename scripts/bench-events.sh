#!/usr/bin/env bash
# The live view's events (SPEC §11) on a host of SERVERS echo instances:
#   - the host's CPU over DURATION seconds with no event client, then with CLIENTS clients
#     following `GET /api/v1/events`, and what the clients add (target < 2 % of one core with
#     100 instances and 10 clients; the host samples its instances every second either way);
#   - the delay of each `stats` frame from the sample it describes (its `at`) to a client reading
#     it (target: within 1.5 s).
# Every frame is checked (JSON, ids one after the other, SERVERS servers in each `stats`, about
# one `stats` a second); the script fails if one was malformed or lost.
#
#   scripts/bench-events.sh          DURATION=20 SERVERS=100 CLIENTS=10 SETTLE=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-20}
servers=${SERVERS:-100}
clients=${CLIENTS:-10}
settle=${SETTLE:-5}

source scripts/lib.sh
build_release
work=$(mktemp -d)
host_pid=""
trap '[[ -n "$host_pid" ]] && kill -KILL "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT

echo 'shutdown_timeout = "1s"' > "$work/host.toml"
for i in $(seq "$servers"); do
  printf '\n[[servers]]\nname = "Echo%s"\ntype = "echo"\nisolation = "none"\nlisteners = [{ ip = "Loopback", port = 0 }]\n' "$i" >> "$work/host.toml"
done
start_host "$work/host.toml" "$work"
# The boot's work (binding, the first samples) is behind before anything is measured.
sleep "$settle"
loadgen() { "$release_dir"/loadgen --admin "$admin" --duration "${duration}s" events --cpu-pid "$host_pid" "$@"; }
loadgen --clients 0 > "$work/quiet"
loadgen --clients "$clients" --servers "$servers" > "$work/events"
stop_host

quiet=$(field cpu_percent < "$work/quiet")
followed=$(field cpu_percent < "$work/events")
added=$(awk -v a="$followed" -v b="$quiet" 'BEGIN { printf "%.2f", a - b }')
errors=$(field errors < "$work/events")
frames=$(field frames < "$work/events")
frames_min=$(field frames_per_client_min < "$work/events")
max_ms=$(field max_ms < "$work/events")

echo
machine "$servers echo instances (isolation none), ${duration} s each, host CPU from /proc/PID/stat ($(field clock_ticks_per_s < "$work/events") ticks/s)"
echo
echo "| measure | value | target |"
echo "|---|---|---|"
echo "| host CPU, no event client (% of one core) | $quiet | |"
echo "| host CPU, $clients event clients (% of one core) | $followed | |"
echo "| CPU the events add (% of one core) | $added | < 2 |"
echo "| \`stats\` delay, p50 (ms) | $(field p50_ms < "$work/events") | |"
echo "| \`stats\` delay, p99 (ms) | $(field p99_ms < "$work/events") | |"
echo "| \`stats\` delay, max (ms) | $max_ms | < 1500 |"
echo
echo "\`stats\` frames read: $frames ($frames_min or more per client); malformed or lost: $errors."
awk -v a="$added" -v d="$max_ms" 'BEGIN {
  print (a < 2 ? "CPU target met." : "CPU target missed.") " " (d < 1500 ? "Delay target met." : "Delay target missed.")
}'
if [[ "$errors" != 0 ]]; then
  echo "FAIL: $errors frames malformed or lost (loadgen said why on stderr)" >&2
  exit 1
fi
