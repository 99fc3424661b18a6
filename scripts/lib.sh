# Shared by the benchmark scripts: build, start a release host on a config, read medians.
# Source it from a script that has `set -euo pipefail` and has cd'ed to the repository root.

# Builds the release host and load generator.
build_release() {
  cargo build --release -q -p supersocket-server -p supersocket-tests --bin supersocketd --bin loadgen --bin baseline
}

# Where cargo puts the release binaries.
release_dir="${CARGO_TARGET_DIR:-target}/release"

# start_host CONFIG_FILE WORKDIR: starts the release supersocketd on the config, waits for its
# ready line, and sets $admin (its URL) and $host_pid. stop_host ends it gracefully.
start_host() {
  "$release_dir/supersocketd" --config "$1" --admin 127.0.0.1:0 --log-level warn > "$2/ready" 2> "$2/host.log" &
  host_pid=$!
  for _ in $(seq 100); do grep -q '^supersocketd ready' "$2/ready" && break; sleep 0.1; done
  admin=$(sed -n 's/^supersocketd ready: admin=//p' "$2/ready")
  [[ -n "$admin" ]] || { cat "$2/host.log" >&2; exit 1; }
}

stop_host() {
  kill -TERM "$host_pid" && wait "$host_pid" 2>/dev/null || true
  host_pid=""
}

# A numeric field of loadgen's JSON line, from stdin; fails if the line has no such field.
field() {
  local value
  value=$(sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p")
  [[ -n "$value" ]] || { echo "no numeric field \"$1\" in the report" >&2; return 1; }
  echo "$value"
}

# The median of numbers on stdin, one a line.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# a / b with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# The line above every table: the machine and how the numbers were taken.
machine() { echo "Machine: $(nproc) cores, $(uname -sr), ulimit -n $(ulimit -n); $1; client and servers on one machine."; }
