# shellcheck shell=bash
# Shared pieces of the benchmark scripts: tools, ports, process clean-up,
# and wrk measurement. Servers bind 127.0.0.1 and are killed by PID on exit.

BENCH_PIDS=()
BENCH_DIRS=()
# Servers are stopped in reverse start order (clients before Redis), then
# temporary files go.
bench_cleanup() {
  local i
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do kill "${BENCH_PIDS[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${BENCH_LUA:-}" ] && rm -f "$BENCH_LUA"
  for d in "${BENCH_DIRS[@]}"; do rm -rf "$d"; done
}
trap bench_cleanup EXIT

bench_need() {
  local cmd=$1 pkg=$2 sudo=""
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ "$(id -u)" != 0 ] && sudo="sudo"
  $sudo apt-get install -y "$pkg" >/dev/null 2>&1 || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "$pkg" >/dev/null; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# wait_up URL: polls with a JSON POST until the server answers 2xx.
wait_up() {
  for _ in $(seq 100); do
    curl -fs -o /dev/null -H 'content-type: application/json' -X POST -d '{"name":"x"}' "$1" && return 0
    sleep 0.1
  done
  echo "server at $1 did not come up" >&2
  exit 1
}

BENCH_LUA=$(mktemp)
cat >"$BENCH_LUA" <<'LUA'
wrk.method = "POST"
wrk.body = '{"name":"world"}'
wrk.headers["Content-Type"] = "application/json"
LUA

warm() { wrk -t1 -c8 -d2s -s "$BENCH_LUA" "$1" >/dev/null; }

# measure URL THREADS CONNS DURATION: prints "rps p50_ms p99_ms requests".
measure() {
  local out errors
  out=$(wrk -t"$2" -c"$3" -d"$4" --latency -s "$BENCH_LUA" "$1")
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
  [ -n "$errors" ] && echo "  warning ($1): $errors" >&2
  python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
n = int(re.search(r"(\d+) requests in", out).group(1))
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {n}")
PY
}

machine() {
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
}

# report NAME_A RPS P50 P99 NAME_B RPS P50 P99: the table and the ratios.
report() {
  printf '%-30s %12s %10s %10s\n' "server" "requests/s" "p50 ms" "p99 ms"
  printf '%-30s %12s %10s %10s\n' "$1" "$2" "$3" "$4"
  printf '%-30s %12s %10s %10s\n' "$5" "$6" "$7" "$8"
  python3 - "$2" "$6" "$3" "$7" "$4" "$8" <<'PY'
import sys
a_rps, b_rps, a50, b50, a99, b99 = map(float, sys.argv[1:])
print(f"ratio sluice/echo: throughput {b_rps/a_rps:.2f}x, p50 {b50/a50:.2f}x, p99 {b99/a99:.2f}x")
PY
}
