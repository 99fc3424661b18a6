#!/usr/bin/env bash
# The benchmark suite: every scenario against the bare tokio baseline (tests/src/bin/baseline.rs)
# and against supersocketd in the same run, alternating, ROUNDS rounds, medians:
#   (a) echo 64 B × 100 connections          (b) echo 16 KiB streaming × 10 connections
#   (c) command PING, 16 in flight × 50
#   (d) 15,000 idle sessions that never talked, that exchanged 1 B, that exchanged 4 KiB, quiet 5 s:
#       RSS per session, all alive; the growth still held 5 s after they all left
#   (e) start to serving (p50 of 100 cycles); stop with 10,000 sessions
#   (f) `supersocket list` wall time with 100 instances configured
#
#   scripts/bench.sh          ROUNDS=3 SECONDS_PER_RUN=3 IDLE=15000 by default
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-3}
idle=${IDLE:-15000}
source scripts/lib.sh

# 15,000 connections need as many descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
build_release
cargo build --release -q -p supersocket-ctl
work=$(mktemp -d)
host_pid=""; baseline_pid=""; many_pid=""
cleanup() {
  for pid in "$host_pid" "$baseline_pid" "$many_pid"; do [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/host.toml" <<'TOML'
shutdown_timeout = "5s"

[[servers]]
name = "Echo"
type = "echo"
max_connections = 20000
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Cycle"
type = "echo"
max_connections = 20000
listeners = [{ ip = "Loopback", port = 0 }]
TOML
start_host "$work/host.toml" "$work"
# start_baseline: a fresh baseline process; sets baseline_pid and bport.
start_baseline() {
  [[ -n "$baseline_pid" ]] && { kill -KILL "$baseline_pid" 2>/dev/null; wait "$baseline_pid" 2>/dev/null || true; }
  "$release_dir"/baseline > "$work/baseline.ready" &
  baseline_pid=$!
  bport=""
  for _ in $(seq 50); do grep -q ready "$work/baseline.ready" && break; sleep 0.1; done
  bport=$(sed -n 's/^baseline ready: //p' "$work/baseline.ready")
  [[ -n "$bport" ]] || { echo "the baseline did not start" >&2; exit 1; }
}
start_baseline

run() { "$release_dir"/loadgen --duration "${seconds}s" "$@"; }
ours() { run --admin "$admin" "$1" --server "$2" "${@:3}"; }
theirs() { run --port "$bport" "$1" "${@:3}"; }

# keep NAME JSON RATE_FIELD: files the run's rate, p99 and errors under $work.
keep() {
  echo "$2" | field "$3" >> "$work/$1.rate"
  echo "$2" | field p99_us >> "$work/$1.p99"
  echo "$2" | field errors >> "$work/errors"
}
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for side in ours theirs; do
    keep "a.$side" "$($side echo Echo --connections 100 --size 64)" requests_per_sec
    keep "b.$side" "$($side stream Echo --connections 10 --size 16384)" mb_per_sec
    if [[ $side == ours ]]; then r=$(ours command Cmd --connections 50 --window 16)
    else r=$(theirs command Cmd --connections 50 --window 16 --echo); fi
    keep "c.$side" "$r" requests_per_sec
  done
done

echo "idle sessions" >&2
# Many source addresses: three rounds of 15,000 connections leave as many in TIME_WAIT. The
# baseline starts afresh for each case: it keeps what the one before left in its heap.
for talk in 0 1 4096; do
  start_baseline
  run --admin "$admin" idle --server Echo --connections "$idle" --sources 40 --talk "$talk" --pid "$host_pid" > "$work/d$talk.ours"
  run --port "$bport" idle --connections "$idle" --sources 40 --talk "$talk" --pid "$baseline_pid" > "$work/d$talk.theirs"
done
echo "start and stop" >&2
start=$(run --admin "$admin" start-time --server Cycle --cycles 100)
stop=$(run --admin "$admin" stop-time --server Cycle --sessions 10000)
stop_host
kill -KILL "$baseline_pid" 2>/dev/null; wait "$baseline_pid" 2>/dev/null || true; baseline_pid=""

echo "list with 100 instances" >&2
{
  for i in $(seq 100); do
    printf '[[servers]]\nname = "S%03d"\ntype = "echo"\nlisteners = [{ ip = "Loopback", port = 0 }]\n' "$i"
  done
} > "$work/many.toml"
"$release_dir"/supersocketd --config "$work/many.toml" --admin 127.0.0.1:0 --log-level warn > "$work/many.ready" 2>/dev/null &
many_pid=$!
for _ in $(seq 100); do grep -q ready "$work/many.ready" && break; sleep 0.1; done
many_admin=$(sed -n 's/^supersocketd ready: admin=//p' "$work/many.ready")
for _ in $(seq 21); do
  t0=$(date +%s%N); "$release_dir"/supersocket --url "$many_admin" list > /dev/null; t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000 )) >> "$work/list.us"
done
kill -TERM "$many_pid"; wait "$many_pid" 2>/dev/null || true; many_pid=""

m() { median < "$work/$1"; }
echo
machine "$rounds rounds of ${seconds}s, medians"
echo
echo "| scenario | SuperSocket | baseline | ratio | target |"
echo "|---|---|---|---|---|"
echo "| (a) echo 64 B × 100 conns, requests/s | $(m a.ours.rate) | $(m a.theirs.rate) | $(ratio "$(m a.ours.rate)" "$(m a.theirs.rate)") | ≥ 1.0 |"
echo "| (a) p99 latency, µs | $(m a.ours.p99) | $(m a.theirs.p99) | $(ratio "$(m a.ours.p99)" "$(m a.theirs.p99)") | ≤ 1.1 |"
echo "| (b) echo 16 KiB streaming × 10 conns, MB/s | $(m b.ours.rate) | $(m b.theirs.rate) | $(ratio "$(m b.ours.rate)" "$(m b.theirs.rate)") | ≥ 1.0 |"
echo "| (b) p99 latency, µs | $(m b.ours.p99) | $(m b.theirs.p99) | $(ratio "$(m b.ours.p99)" "$(m b.theirs.p99)") | ≤ 1.2 |"
echo "| (c) PING, 16 in flight × 50 conns, requests/s | $(m c.ours.rate) | $(m c.theirs.rate) (echo) | $(ratio "$(m c.ours.rate)" "$(m c.theirs.rate)") | |"
echo "| (c) p99 latency, µs | $(m c.ours.p99) | $(m c.theirs.p99) | $(ratio "$(m c.ours.p99)" "$(m c.theirs.p99)") | |"
d() { field "$2" < "$work/d$1.$3"; }
for talk in 0 1 4096; do
  case $talk in 0) what="never talked";; 1) what="exchanged 1 B";; *) what="exchanged 4 KiB";; esac
  hb=$(d "$talk" bytes_per_session ours); bb=$(d "$talk" bytes_per_session theirs)
  echo "| (d) $idle idle sessions that $what, RSS bytes per session | $hb | $bb | $(ratio "$hb" "$bb") | ≤ 1024 |"
  echo "| (d) … of that growth, still held 5 s after they all left, % | $(d "$talk" left_percent ours) | $(d "$talk" left_percent theirs) | | ≤ 25 |"
  echo "| (d) … sessions answering a final echo | $(d "$talk" alive ours) | $(d "$talk" alive theirs) | | all |"
done
echo "| (e) start to serving, p50 of 100, ms | $(echo "$start" | field p50_ms) | | | < 5 |"
echo "| (e) stop with 10,000 sessions, ms | $(echo "$stop" | field stop_ms) | | | < 500 |"
echo "| (f) \`supersocket list\`, 100 instances, ms | $(awk -v u="$(m list.us)" 'BEGIN { printf "%.1f", u / 1000 }') | | | < 50 |"
echo
echo "Connection errors over every traffic run: $(awk '{ s += $1 } END { print s + 0 }' "$work/errors")."
