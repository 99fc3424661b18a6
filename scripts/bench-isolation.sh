#!/usr/bin/env bash
# Isolation costs, measured side by side in one run:
#   - echo throughput of a process-isolated instance against the same instance in-process
#     (64-byte messages, 100 connections, one in flight each), alternating rounds: an agent with
#     the default one worker thread, and one with as many as the host's runtime has (cores);
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
name = "InAgentWide"
type = "echo"
isolation = "process"
threads = CORES
listeners = [{ ip = "Loopback", port = 0 }]
TOML
sed -i "s/CORES/$(nproc)/" "$work/host.toml"

start_host "$work/host.toml" "$work"

loadgen() { target/release/loadgen --admin "$admin" --duration "${seconds}s" "$@"; }

agents="InAgent InAgentWide InHost"
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
  target/release/loadgen --admin "$admin" start-time --server "$server" --cycles "$cycles" | field p50_ms > "$work/$server.start"
done
stop_host

a=$(median < "$work/InAgent.rate"); w=$(median < "$work/InAgentWide.rate"); h=$(median < "$work/InHost.rate")
ap=$(median < "$work/InAgent.p99"); wp=$(median < "$work/InAgentWide.p99"); hp=$(median < "$work/InHost.p99")
echo
machine "$rounds rounds of ${seconds}s, medians"
echo
echo "| measure | process | in-process | ratio |"
echo "|---|---|---|---|"
echo "| echo 64 B × 100 connections, agent of 1 thread (messages/s) | $a | $h | $(ratio "$a" "$h") |"
echo "| p99 latency (µs) | $ap | $hp | $(ratio "$ap" "$hp") |"
echo "| echo 64 B × 100 connections, agent of $(nproc) threads (messages/s) | $w | $h | $(ratio "$w" "$h") |"
echo "| p99 latency (µs) | $wp | $hp | $(ratio "$wp" "$hp") |"
echo
echo "| isolation | start to serving, p50 of $cycles (ms) |"
echo "|---|---|"
for pair in "none:InHost" "runtime:OwnRuntime" "process:InAgent"; do
  echo "| ${pair%%:*} | $(cat "$work/${pair#*:}.start") |"
done
