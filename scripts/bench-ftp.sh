#!/usr/bin/env bash
# FTP transfers of one large file against the disk itself, in the same run, alternating rounds:
#   RETR with curl to /dev/null   against  dd of the same file to /dev/null
#   STOR with curl from the file  against  dd of the file to a new file in the same folder
# Each write is synced and removed before the next step. Also the host's resident memory.
#
#   scripts/bench-ftp.sh          ROUNDS=3 SIZE_MIB=1024 by default
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
size_mib=${SIZE_MIB:-1024}

source scripts/lib.sh
build_release
work=$(mktemp -d)
host_pid=""
trap '[[ -n "$host_pid" ]] && kill -KILL "$host_pid" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/root"
head -c "$((size_mib << 20))" /dev/urandom > "$work/root/big.bin"
cat > "$work/host.toml" <<'TOML'
[[servers]]
name = "FTPServer"
type = "ftp"
listeners = [{ ip = "Loopback", port = 0 }]
options = { root = "root" }
TOML
start_host "$work/host.toml" "$work"
port=$(curl -s "$admin/api/v1/servers/FTPServer" | sed -n 's/.*"port":\([0-9]*\).*/\1/p')
rss_before=$(awk '/VmRSS/ { print $2 }' "/proc/$host_pid/status")

# ms COMMAND...: runs it, prints its wall time in milliseconds.
ms() { local t0; t0=$(date +%s%N); "$@" > /dev/null 2>&1; echo $(( ($(date +%s%N) - t0) / 1000000 )); }
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  sync
  ms curl -sS -o /dev/null "ftp://127.0.0.1:$port/big.bin" >> "$work/retr"
  ms dd if="$work/root/big.bin" of=/dev/null bs=512K >> "$work/read"
  sync
  ms curl -sS -T "$work/root/big.bin" "ftp://127.0.0.1:$port/up.bin" >> "$work/stor"
  sync; rm -f "$work/root/up.bin"; sync
  ms dd if="$work/root/big.bin" of="$work/root/copy.bin" bs=512K >> "$work/write"
  sync; rm -f "$work/root/copy.bin"; sync
done
peak=$(awk '/VmHWM/ { print $2 }' "/proc/$host_pid/status")
stop_host

m() { median < "$work/$1"; }
rate() { awk -v ms="$1" -v mib="$size_mib" 'BEGIN { printf "%.0f", mib * 1048576 / 1e6 / (ms / 1000) }'; }
echo
machine "$rounds rounds, medians; a ${size_mib} MiB file"
echo
echo "| transfer | FTP, ms (MB/s) | dd on the same file, ms (MB/s) | ratio of times |"
echo "|---|---|---|---|"
echo "| RETR (read) | $(m retr) ($(rate "$(m retr)")) | $(m read) ($(rate "$(m read)")) | $(ratio "$(m retr)" "$(m read)") |"
echo "| STOR (write) | $(m stor) ($(rate "$(m stor)")) | $(m write) ($(rate "$(m write)")) | $(ratio "$(m stor)" "$(m write)") |"
echo
echo "Host RSS: $rss_before KiB before, peak $peak KiB."
