#!/usr/bin/env bash
# Dispatch and chat fan-out throughput, each beside a baseline measured in the same run:
#   - DISPATCH from sessions of ServerA to sessions of ServerB, against ECHO answered inside
#     ServerB (the cost of crossing instances);
#   - SAY fan-out through the pomelo chat cluster (gate, 3 connectors, 3 chat backends), against
#     BROADCAST to a group of the same size inside one instance.
# Runs alternate, ROUNDS times; the table shows medians.
#
#   scripts/bench-dispatch.sh            ROUNDS=3 SECONDS_PER_RUN=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-3}

source scripts/lib.sh
build_release
work=$(mktemp -d)
host_pid=""
trap '[[ -n "$host_pid" ]] && kill -KILL "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT

cat > "$work/host.toml" <<'TOML'
[[servers]]
name = "ServerA"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "ServerB"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "gate-server-1"
type = "gate"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "connector-server"
type = "connector"
replicas = 3
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "chat-server"
type = "chat"
replicas = 3

[[servers]]
name = "Broadcast"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
TOML

start_host "$work/host.toml" "$work"

loadgen() { target/release/loadgen --admin "$admin" --duration "${seconds}s" "$@"; }

: > "$work/dispatch" ; : > "$work/echo" ; : > "$work/chat" ; : > "$work/broadcast"
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  loadgen dispatch --pairs 8 --window 32 | field lines_per_sec >> "$work/dispatch"
  loadgen dispatch --pairs 8 --window 32 --direct | field lines_per_sec >> "$work/echo"
  loadgen chat --users 60 --rooms 6 --window 4 | field deliveries_per_sec >> "$work/chat"
  loadgen chat --users 60 --rooms 6 --window 4 --broadcast Broadcast | field deliveries_per_sec >> "$work/broadcast"
done

stop_host

d=$(median < "$work/dispatch"); e=$(median < "$work/echo")
c=$(median < "$work/chat"); b=$(median < "$work/broadcast")
echo
machine "$rounds rounds of ${seconds}s, medians"
echo
echo "| scenario | SuperSocket | baseline | ratio |"
echo "|---|---|---|---|"
echo "| DISPATCH A→B, 8 pairs × 32 in flight, 32 B (lines/s) | $d | $e (ECHO in B) | $(ratio "$d" "$e") |"
echo "| chat SAY fan-out, 60 users in 6 rooms (deliveries/s) | $c | $b (BROADCAST to 10) | $(ratio "$c" "$b") |"
