#!/usr/bin/env bash
# Shows that a session writes all replies produced by one read with one write syscall:
# runs supersocketd on a scratch config under strace, pipelines 100 commands per write from a
# client, and counts the server's reads of requests and writes of replies.
#
#   scripts/hot-path-check.sh        (needs strace and python3; builds in release mode)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { echo "strace is needed (apt-get install strace)"; exit 1; }
cargo build --release -q -p supersocket-server
work=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/host.toml" <<'TOML'
[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
TOML
strace -f -qq -e trace=read,recvfrom,write,writev,sendto -o "$work/trace" \
  target/release/supersocketd --config "$work/host.toml" --admin 127.0.0.1:0 > "$work/stdout" 2>/dev/null &
for _ in $(seq 100); do grep -q ready "$work/stdout" && break; sleep 0.1; done
admin=$(sed -n 's/^supersocketd ready: admin=//p' "$work/stdout")
port=$(python3 -c "import json,urllib.request;print(json.load(urllib.request.urlopen('$admin/api/v1/servers/Cmd'))['listeners'][0]['port'])")
python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for _ in range(50):
    s.sendall(b"ADD 1 2\r\n" * 100)
    got = b""
    while len(got) < 300:
        got += s.recv(4096)
s.close()
PY
host_pid=$(python3 -c "import json,urllib.request;print(json.load(urllib.request.urlopen('$admin/api/v1/host'))['pid'])")
kill -TERM "$host_pid"
wait
reads=$(grep -cE '(read|recvfrom)\([0-9]+, "ADD' "$work/trace" || true)
writes=$(grep -cE '(write|sendto)\([0-9]+, "3|writev\([0-9]+, \[\{iov_base="3' "$work/trace" || true)
echo "50 batches of 100 commands: $reads reads of requests, $writes writes of replies"
