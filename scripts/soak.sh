#!/usr/bin/env bash
# Chaos soak: "nothing lost at the seams" (SPEC §9). Starts a release host on
# tests/configs/soak.toml, which mixes isolation levels — echo in none and process; command in none,
# runtime and process; the pomelo chat cluster with the gate in none, connectors in runtime and
# process and chat backends in process; an ftp instance — and runs `loadgen soak` against it: echo,
# command, DISPATCH, chat and FTP traffic with every message checked, while agents are killed and
# frozen, instances stopped, restarted and reloaded; then SIGTERM. Prints a summary and loadgen's
# JSON line; exits non-zero if a message was lost or left without an outcome, refused for a
# receiver that was there, a connection was closed unserved, no fault was injected, an agent
# outlived the host, or the host did not exit 0.
#
#   scripts/soak.sh [DURATION]        default 60s; SEED=N replays a run's fault schedule;
#                                     SOAK_ARGS="--fault-every 400ms ..." adds loadgen options
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60s}

source scripts/lib.sh
build_release
work=$(mktemp -d)
host_pid=""
trap '[[ -n "$host_pid" ]] && kill -KILL "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT

cp tests/configs/soak.toml "$work/host.toml"

start_host "$work/host.toml" "$work"
echo "host pid $host_pid, admin $admin; soaking for $duration" >&2

set +e
# SOAK_ARGS is split into words on purpose.
# shellcheck disable=SC2086
"$release_dir/loadgen" --admin "$admin" --duration "$duration" soak \
  --config "$work/host.toml" --host-pid "$host_pid" ${SEED:+--seed "$SEED"} ${SOAK_ARGS:-} \
  > "$work/report.json" 2> "$work/soak.log"
soak_status=$?
state=$(ps -o stat= -p "$host_pid" 2>/dev/null || true)
if [[ -n "$state" && "$state" != Z* ]]; then
  echo "the host is still running after its SIGTERM: killing it" >&2
  kill -KILL "$host_pid"
fi
# The host's exit status is known here, where it is reaped.
wait "$host_pid" 2>/dev/null
host_status=$?
host_pid=""
set -e

grep '^soak:' "$work/soak.log" >&2 || cat "$work/soak.log" >&2
echo "host exit status (from the shell): $host_status" >&2
cat "$work/report.json"
if [[ $soak_status -ne 0 || $host_status -ne 0 ]]; then
  echo "soak FAILED (loadgen $soak_status, host $host_status)" >&2
  exit 1
fi
echo "soak passed" >&2
