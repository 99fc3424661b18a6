#!/usr/bin/env bash
# Isolation costs, measured side by side in one run:
#   - echo throughput of a process-isolated instance against the same instance in-process
#     (64-byte messages, 100 connections, one in flight each), alternating rounds: an agent with
#     the default worker thread per core (as the host's runtime), and one of `threads = 1`;
#   - time from `start` to serving for each isolation level (p50 of CYCLES stop/start cycles).
#
#   scripts/bench-isolation.sh          ROUNDS=5 SECONDS_PER_RUN=3 CYCLES=20 by default
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
seconds=${SECONDS_PER_RUN:-3}
cycles=${CYCLES:-20}

source scripts/lib.sh
build_release
work=$(mktemp -d)
host_pid=""
trap '[[ -n "$host_pid" ]] && kill -KILL "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/host.toml" <<'TOML'
shutdown_timeout = "1s"

[[servers]]
name = "InHost"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "OwnRuntime"
type = "echo"
isolation = "runtime"
threads = 2
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "InAgent"
type = "echo"
isolation = "process"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "InAgentNarrow"
type = "echo"
isolation = "process"
threads = 1
listeners = [{ ip = "Loopback", port = 0 }]
TOML

start_host "$work/host.toml" "$work"

loadgen() { "$release_dir"/loadgen --admin "$admin" --duration "${seconds}s" "$@"; }

agents="InAgent InAgentNarrow InHost"
for server in $agents; do : > "$work/$server.rate"; : > "$work/$server.p99"; done
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for server in $agents; do
    out=$(loadgen echo --server "$server" --connections 100 --size 64 --window 1)
    echo "$out" | field requests_per_sec >> "$work/$server.rate"
    echo "$out" | field p99_us >> "$work/$server.p99"
  done
done
for server in InHost OwnRuntime InAgent; do
  "$release_dir"/loadgen --admin "$admin" start-time --server "$server" --cycles "$cycles" | field p50_ms > "$work/$server.start"
done
stop_host

a=$(median < "$work/InAgent.rate"); n=$(median < "$work/InAgentNarrow.rate"); h=$(median < "$work/InHost.rate")
ap=$(median < "$work/InAgent.p99"); np=$(median < "$work/InAgentNarrow.p99"); hp=$(median < "$work/InHost.p99")
echo
machine "$rounds rounds of ${seconds}s, medians"
echo
echo "| measure | process | in-process | ratio |"
echo "|---|---|---|---|"
echo "| echo 64 B × 100 connections, agent of $(nproc) threads, the default (messages/s) | $a | $h | $(ratio "$a" "$h") |"
echo "| p99 latency (µs) | $ap | $hp | $(ratio "$ap" "$hp") |"
echo "| echo 64 B × 100 connections, agent of \`threads = 1\` (messages/s) | $n | $h | $(ratio "$n" "$h") |"
echo "| p99 latency (µs) | $np | $hp | $(ratio "$np" "$hp") |"
echo
echo "| isolation | start to serving, p50 of $cycles (ms) |"
echo "|---|---|"
for pair in "none:InHost" "runtime:OwnRuntime" "process:InAgent"; do
  echo "| ${pair%%:*} | $(cat "$work/${pair#*:}.start") |"
done
