#!/usr/bin/env bash
# Dispatch and chat fan-out throughput, every figure beside a baseline measured in the same run,
# with the same client:
#   - DISPATCH from sessions of ServerA to sessions of ServerB, against ECHO answered inside
#     ServerB (the cost of crossing instances);
#   - SAY fan-out through the pomelo chat cluster (gate, 3 connectors, 3 chat backends), against
#     BROADCAST to a group of the same size inside one instance;
#   - both again on a host whose every instance runs in an agent process (`isolation =
#     "process"` at the top of its config), against the same on the in-process host: once with
#     agents of the default worker thread per core, once with `threads = 1` on every instance.
# Every line and message is checked by loadgen; runs alternate, ROUNDS times; medians.
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

cat > "$work/servers.toml" <<'TOML'
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
cp "$work/servers.toml" "$work/none.toml"
{ echo 'isolation = "process"'; cat "$work/servers.toml"; } > "$work/process.toml"
sed 's/^type = .*/&\nthreads = 1/' "$work/process.toml" > "$work/single.toml"

loadgen() { "$release_dir"/loadgen --admin "$admin" --duration "${seconds}s" "$@"; }
# measure NAME FIELD MODE...: one loadgen run on the current host; appends FIELD to $work/NAME
# and warns about connections that failed.
measure() {
  local name=$1 figure=$2 line errors; shift 2
  line=$(loadgen "$@")
  errors=$(field errors <<< "$line")
  [[ "$errors" == 0 ]] || echo "warning: $name: $errors connections failed" >&2
  field "$figure" <<< "$line" >> "$work/$name"
}

for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for level in none process single; do
    start_host "$work/$level.toml" "$work"
    measure "$level-dispatch" lines_per_sec dispatch --pairs 8 --window 32
    measure "$level-chat" deliveries_per_sec chat --users 60 --rooms 6 --window 4
    if [[ "$level" == none ]]; then
      measure echo lines_per_sec dispatch --pairs 8 --window 32 --direct
      measure broadcast deliveries_per_sec chat --users 60 --rooms 6 --window 4 --broadcast Broadcast
    fi
    stop_host
  done
done

dn=$(median < "$work/none-dispatch"); dp=$(median < "$work/process-dispatch"); e=$(median < "$work/echo")
cn=$(median < "$work/none-chat"); cp=$(median < "$work/process-chat"); b=$(median < "$work/broadcast")
ds=$(median < "$work/single-dispatch"); cs=$(median < "$work/single-chat")
echo
machine "$rounds rounds of ${seconds}s, medians"
echo
echo "| scenario | SuperSocket | baseline | ratio |"
echo "|---|---|---|---|"
echo "| DISPATCH A→B in-process, 8 pairs × 32 in flight, 32 B (lines/s) | $dn | $e (ECHO in B) | $(ratio "$dn" "$e") |"
echo "| chat SAY fan-out in-process, 60 users in 6 rooms (deliveries/s) | $cn | $b (BROADCAST to 10) | $(ratio "$cn" "$b") |"
echo "| DISPATCH A→B, both in agents (lines/s) | $dp | $dn (in-process) | $(ratio "$dp" "$dn") |"
echo "| chat SAY fan-out, every instance in an agent (deliveries/s) | $cp | $cn (in-process) | $(ratio "$cp" "$cn") |"
echo "| DISPATCH A→B, both in agents of \`threads = 1\` (lines/s) | $ds | $dn (in-process) | $(ratio "$ds" "$dn") |"
echo "| chat SAY fan-out, every instance in an agent of \`threads = 1\` (deliveries/s) | $cs | $cn (in-process) | $(ratio "$cs" "$cn") |"
