#!/usr/bin/env bash
# Smoke test of a running host, as a CI job would do it: start supersocketd on a scratch config,
# wait for health, drive it with curl and the supersocket CLI, stop and start one instance while
# a client of another keeps its session, and clean up whatever happens.
#
#   scripts/smoke.sh                      builds and uses target/debug binaries
#   SUPERSOCKETD=... SUPERSOCKET=... scripts/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${SUPERSOCKETD:-}" || -z "${SUPERSOCKET:-}" ]]; then
  cargo build -q -p supersocket-server -p supersocket-ctl
fi
supersocketd=${SUPERSOCKETD:-target/debug/supersocketd}
supersocket=${SUPERSOCKET:-target/debug/supersocket}
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "smoke: $tool is needed" >&2; exit 1; }
done

work=$(mktemp -d)
host_pid=""
cleanup() {
  exec 3<&- 3>&- 2>/dev/null || true
  if [[ -n "$host_pid" ]] && kill -0 "$host_pid" 2>/dev/null; then kill -KILL "$host_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "smoke: FAIL: $*" >&2; echo "--- host log ---" >&2; cat "$work/host.log" >&2; exit 1; }
step() { echo "smoke: $*"; }

cat > "$work/host.toml" <<'TOML'
shutdown_timeout = "2s"

[[servers]]
name = "Front"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]

[[servers]]
name = "Back"
type = "echo"
listeners = [{ ip = "Loopback", port = 0 }]
TOML

"$supersocketd" --config "$work/host.toml" --admin 127.0.0.1:0 > "$work/ready" 2> "$work/host.log" &
host_pid=$!
for _ in $(seq 200); do
  grep -q '^supersocketd ready: ' "$work/ready" && break
  kill -0 "$host_pid" 2>/dev/null || fail "the host exited before it was ready"
  sleep 0.05
done
url=$(sed -n 's/^supersocketd ready: admin=//p' "$work/ready")
[[ -n "$url" ]] || fail "no ready line"
export SUPERSOCKET_URL=$url
step "host ready at $url"

"$supersocket" health --wait 10s >/dev/null || fail "health"
curl -fsS "$url/livez" >/dev/null || fail "livez"
curl -fsS "$url/readyz" | jq -e '.ready == true' >/dev/null || fail "readyz"
"$supersocket" list | grep -q '^Front .*running' || fail "list shows Front running"
step "healthy; list shows every server"

front_port=$(curl -fsS "$url/api/v1/servers/Front" | jq -r '.listeners[0].port')
exec 3<>"/dev/tcp/127.0.0.1/$front_port"
printf 'WHOAMI\r\n' >&3
IFS= read -r -t 5 session <&3 || fail "no WHOAMI answer"
session=${session%$'\r'}
step "client of Front holds session $session"

"$supersocket" stop Back | grep -qx 'Back: stopped' || fail "stop Back"
[[ $(curl -fsS "$url/api/v1/servers/Back" | jq -r .state) == stopped ]] || fail "Back not stopped"
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")
[[ $code == 503 ]] || fail "readyz answers $code with an autostart server stopped"
"$supersocket" start Back | grep -qx 'Back: running' || fail "start Back"
"$supersocket" health --wait 10s >/dev/null || fail "health after start"
step "stopped and started Back"

printf 'WHOAMI\r\n' >&3
IFS= read -r -t 5 again <&3 || fail "Front's client lost its session"
[[ ${again%$'\r'} == "$session" ]] || fail "Front's session changed: $session -> $again"
"$supersocket" --output json sessions Front | jq -e --arg id "$session" 'map(.id) | index($id) != null' >/dev/null \
  || fail "session $session not listed"
step "Front kept session $session throughout"

curl -fsS "$url/metrics" | grep -q '^supersocket_server_sessions{server="Front",type="command"} 1$' || fail "metrics"
exec 3<&- 3>&-
kill -TERM "$host_pid"
for _ in $(seq 100); do kill -0 "$host_pid" 2>/dev/null || break; sleep 0.05; done
wait "$host_pid" && status=0 || status=$?
[[ $status == 0 ]] || fail "the host exited $status after SIGTERM"
host_pid=""
step "graceful shutdown, exit 0"
echo "smoke: OK"
