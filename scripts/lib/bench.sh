# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here are read by the scripts that source this file
# Shared pieces of the benchmark scripts: tools, ports, process clean-up,
# and wrk measurement. Servers bind 127.0.0.1 and are killed by PID on exit.
#
# Two layers:
#   - the comparison with the reference servers ("peers", see bench_peers):
#     the fixed pipeline scripts/lib/bench-pipeline.yaml, the peers' 100-byte
#     JSON body, interleaved rounds and a best-of summary (bench-ingress,
#     bench-redis);
#   - the older single-run helpers (wait_up, warm, measure, report) with the
#     body {"name":"world"}, still used by bench-tracing.

BENCH_PIDS=()
BENCH_DIRS=()
# Servers are stopped in reverse start order (clients before Redis) with
# SIGTERM, given two seconds, then killed (sluice-web-ingress would wait out its
# 5 s drain grace, and nothing here needs a graceful stop); then temporary
# files go. Disowned first, so that bash does not announce the kills.
bench_cleanup() {
  local i pid alive
  for pid in "${BENCH_PIDS[@]}"; do disown "$pid" 2>/dev/null || true; done
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do kill "${BENCH_PIDS[i]}" 2>/dev/null || true; done
  for _ in $(seq 20); do
    alive=0
    for pid in "${BENCH_PIDS[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${BENCH_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${BENCH_LUA:-}" ] && rm -f "$BENCH_LUA"
  for d in "${BENCH_DIRS[@]}"; do rm -rf "$d"; done
}
trap bench_cleanup EXIT
# Interrupted runs leave through `exit`, so the EXIT trap cleans up.
trap 'exit 130' INT
trap 'exit 143' TERM

bench_need() {
  local cmd=$1 pkg=$2 sudo=""
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ "$(id -u)" != 0 ] && sudo="sudo"
  $sudo apt-get install -y "$pkg" >/dev/null 2>&1 || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "$pkg" >/dev/null; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

machine() {
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
}

# === The comparison with the peers (bench-ingress, bench-redis) ===

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The benchmark's own copy of the hello pipeline, and its one interface.
BENCH_PIPELINE=$BENCH_REPO/scripts/lib/bench-pipeline.yaml
BENCH_PATH=/v1/hello
# Sluice's release binaries.
BENCH_BIN=$(realpath -m "${CARGO_TARGET_DIR:-$BENCH_REPO/target}")/release
# wrk threads: two, or one per server when more than two servers share a run.
BENCH_THREADS=2
# Load before every measured run, same threads and connections.
BENCH_WARMUP=2s
BENCH_PORTS_USED=()
BENCH_ERRORS=0

# bench_usage_error MESSAGE: a bad command line.
bench_usage_error() {
  echo "$(basename "$0"): $1 (see --help)" >&2
  exit 2
}

# bench_peers: finds the reference servers (PEERS, default <repo>/../shared/peers)
# and sets PEERS, PEERS_BIN (their release binaries, under PEERS_TARGET,
# default target/peers) and BENCH_BODY (the peers' 100-byte JSON body).
bench_peers() {
  PEERS=${PEERS:-$BENCH_REPO/../shared/peers}
  if [ ! -f "$PEERS/Cargo.toml" ] || [ ! -f "$PEERS/bench/post100.json" ]; then
    echo "$(basename "$0"): the reference servers are missing: no Cargo.toml and bench/post100.json in $PEERS" >&2
    echo "  set PEERS to the peers directory (axum-echo, axum-redis-rr, bench/post100.json)" >&2
    exit 1
  fi
  PEERS=$(cd "$PEERS" && pwd)
  PEERS_TARGET=$(realpath -m "${PEERS_TARGET:-$BENCH_REPO/target/peers}")
  PEERS_BIN=$PEERS_TARGET/release
  BENCH_BODY=$PEERS/bench/post100.json
}

# bench_build_peers BIN...: builds those peer binaries (release).
bench_build_peers() {
  local args=() b
  for b in "$@"; do args+=(--bin "$b"); done
  cargo build --release -q --manifest-path "$PEERS/Cargo.toml" --target-dir "$PEERS_TARGET" "${args[@]}"
}

# bench_setup: the run's temporary directory (BENCH_WORK: server logs, wrk
# output, results) and the wrk script (BENCH_LOAD). Needs bench_peers.
bench_setup() {
  BENCH_WORK=$(mktemp -d -t sluice-bench.XXXXXX)
  BENCH_DIRS+=("$BENCH_WORK")
  local body
  body=$(cat "$BENCH_BODY")
  BENCH_BODY_BYTES=$(printf '%s' "$body" | wc -c)
  case $body in *']==]'*) echo "$BENCH_BODY: cannot be quoted in Lua" >&2; exit 1 ;; esac
  BENCH_LOAD=$BENCH_WORK/load.lua
  {
    echo 'wrk.method = "POST"'
    echo 'wrk.headers["Content-Type"] = "application/json"'
    printf 'wrk.body = [==[%s]==]\n' "$body"
    cat <<'LUA'
-- BENCH_PORTS="P1 P2 ...": thread i connects to 127.0.0.1:P(i mod n), so one
-- wrk spreads its connections evenly over several servers and reports one
-- latency histogram over all of them.
local ports = {}
for p in string.gmatch(os.getenv("BENCH_PORTS") or "", "%d+") do ports[#ports + 1] = p end
local threads = 0
function setup(thread)
  if #ports > 0 then
    thread.addr = wrk.lookup("127.0.0.1", ports[threads % #ports + 1])[1]
  end
  threads = threads + 1
end

-- requests seconds p50_ms p99_ms non2xx connect read write timeout
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %.3f %.3f %.3f %d %d %d %d %d\n",
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect, e.read, e.write, e.timeout))
end
LUA
  } >"$BENCH_LOAD"
}

# bench_port: a free loopback port not handed out before in this run.
bench_port() {
  local p used
  while :; do
    p=$(free_port)
    used=0
    for u in "${BENCH_PORTS_USED[@]}"; do [ "$u" = "$p" ] && used=1; done
    [ "$used" = 0 ] && break
  done
  BENCH_PORTS_USED+=("$p")
  echo "$p"
}

# bench_start NAME CMD...: starts CMD in the background, output to
# $BENCH_WORK/NAME.log; its PID goes to BENCH_LAST_PID and BENCH_PIDS.
bench_start() {
  local name=$1
  shift
  "$@" >"$BENCH_WORK/$name.log" 2>&1 &
  BENCH_LAST_PID=$!
  BENCH_PIDS+=("$BENCH_LAST_PID")
}

# bench_stop PID...: SIGTERM, up to five seconds to exit, then SIGKILL.
bench_stop() {
  local pid keep=() p gone
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for p in "${BENCH_PIDS[@]}"; do
    gone=0
    for pid in "$@"; do [ "$p" = "$pid" ] && gone=1; done
    [ "$gone" = 0 ] && keep+=("$p")
  done
  BENCH_PIDS=("${keep[@]}")
}

# bench_dead NAME PID MESSAGE: reports a server that failed, with its log, and exits.
bench_dead() {
  echo "!!! $1 (pid $2): $3; last lines of its log:" >&2
  tail -n 20 "$BENCH_WORK/$1.log" >&2 || true
  exit 1
}

# bench_wait_get NAME PID URL: until GET URL answers 2xx (ten seconds).
bench_wait_get() {
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || bench_dead "$1" "$2" "exited"
    curl -fs -o /dev/null "$3" && return 0
    sleep 0.1
  done
  bench_dead "$1" "$2" "no 2xx from GET $3 within 10 s"
}

# bench_wait_post NAME PID URL: until POST URL with the benchmark's body
# answers 2xx (ten seconds); BENCH_ANSWER is that answer.
bench_wait_post() {
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || bench_dead "$1" "$2" "exited"
    if BENCH_ANSWER=$(curl -fs -H 'Content-Type: application/json' --data-binary @"$BENCH_BODY" "$3"); then
      return 0
    fi
    sleep 0.1
  done
  bench_dead "$1" "$2" "no 2xx from POST $3 within 10 s"
}

# bench_redis_up: one redis-server on a free loopback port, no persistence;
# sets BENCH_REDIS_PORT, BENCH_REDIS_URL and BENCH_REDIS_PID.
bench_redis_up() {
  BENCH_REDIS_PORT=$(bench_port)
  bench_start redis redis-server --port "$BENCH_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$BENCH_WORK"
  BENCH_REDIS_PID=$BENCH_LAST_PID
  BENCH_REDIS_URL=redis://127.0.0.1:$BENCH_REDIS_PORT
  for _ in $(seq 100); do
    kill -0 "$BENCH_REDIS_PID" 2>/dev/null || bench_dead redis "$BENCH_REDIS_PID" "exited"
    [ "$(bench_redis ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  bench_dead redis "$BENCH_REDIS_PID" "no PONG within 10 s"
}

bench_redis() { redis-cli -p "$BENCH_REDIS_PORT" "$@"; }

# bench_redis_info FIELD: one field of INFO (e.g. redis_version, used_memory).
bench_redis_info() { bench_redis info | tr -d '\r' | awk -F: -v f="$1" '$1 == f {print $2}'; }

# bench_redis_cmds REQUESTS: Redis commands since the last CONFIG RESETSTAT,
# as "PER_REQUEST<TAB>BREAKDOWN" (commands at 0.01 per request or more).
bench_redis_cmds() {
  bench_redis info commandstats | python3 -c '
import re, sys
n = int(sys.argv[1])
calls = {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_([^:]+):calls=(\d+)", sys.stdin.read())}
calls.pop("config|resetstat", None)
total = sum(calls.values())
if n == 0:
    print("-\t-")
else:
    parts = [f"{k.upper()} {v / n:.2f}" for k, v in sorted(calls.items(), key=lambda kv: (-kv[1], kv[0])) if v / n >= 0.01]
    print(f"{total / n:.2f}\t{total} commands: " + (", ".join(parts) or "none"))
' "$1"
}

# bench_rss PID: resident memory (VmRSS) in MiB, or "gone".
bench_rss() {
  local kib
  kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
  if [ -n "$kib" ]; then awk -v k="$kib" 'BEGIN {printf "%.1f", k / 1024}'; else echo gone; fi
}

# bench_wrk_cmd PATH CONNS DURATION PORT...: sets BENCH_WRK, the wrk command
# against 127.0.0.1:PORT/PATH for every PORT (see load.lua), and
# BENCH_WRK_THREADS. wrk gives each thread CONNS / threads connections.
bench_wrk_cmd() {
  local path=$1 conns=$2 duration=$3 threads=$BENCH_THREADS
  shift 3
  [ "$#" -gt "$threads" ] && threads=$#
  BENCH_WRK_THREADS=$threads
  BENCH_WRK=(env "BENCH_PORTS=$*" wrk -t"$threads" -c"$conns" -d"$duration" -s "$BENCH_LOAD" "http://127.0.0.1:$1$path")
}

# bench_threads SERVERS: the wrk threads of a run against that many servers.
bench_threads() { if [ "$1" -gt "$BENCH_THREADS" ]; then echo "$1"; else echo "$BENCH_THREADS"; fi; }

# bench_parse FILE: the RESULT line of wrk's output in FILE, without the tag:
# "requests seconds p50_ms p99_ms non2xx connect read write timeout".
bench_parse() {
  local line
  line=$(grep '^RESULT ' "$1" || true)
  if [ -z "$line" ]; then
    echo "!!! wrk printed no result:" >&2
    cat "$1" >&2
    exit 1
  fi
  echo "${line#RESULT }"
}

# bench_sustain PATH CONNS DURATION SAMPLER PORT...: a warm-up, then one wrk
# run of DURATION against the servers on PORT..., calling the function
# SAMPLER with the seconds elapsed at 0, every 10 s and at the end. With
# BENCH_SUSTAIN_BEFORE set, that command runs between the warm-up and the
# measured run. Prints wrk's result; sets BENCH_SUSTAIN_REQUESTS; exits 1
# when wrk failed or saw non-2xx answers or socket errors.
bench_sustain() {
  local path=$1 conns=$2 duration=$3 sampler=$4 raw wrk_pid start next rc=0
  local requests secs p50 p99 e_status e_connect e_read e_write e_timeout
  shift 4
  bench_wrk_cmd "$path" "$conns" "$BENCH_WARMUP" "$@"
  "${BENCH_WRK[@]}" >/dev/null 2>&1 || true
  bench_wrk_cmd "$path" "$conns" "$duration" "$@"
  if [ -n "${BENCH_SUSTAIN_BEFORE:-}" ]; then $BENCH_SUSTAIN_BEFORE >/dev/null; fi
  raw=$(mktemp "$BENCH_WORK/sustain.XXXXXX")
  "${BENCH_WRK[@]}" >"$raw" 2>&1 &
  wrk_pid=$!
  BENCH_PIDS+=("$wrk_pid")
  start=$SECONDS
  next=10
  "$sampler" 0
  while kill -0 "$wrk_pid" 2>/dev/null; do
    if [ $((SECONDS - start)) -ge "$next" ]; then
      "$sampler" "$next"
      next=$((next + 10))
    fi
    sleep 0.2
  done
  wait "$wrk_pid" || rc=$?
  "$sampler" "$((SECONDS - start))"
  if [ "$rc" != 0 ]; then
    echo "!!! wrk failed:" >&2
    cat "$raw" >&2
    exit 1
  fi
  read -r requests secs p50 p99 e_status e_connect e_read e_write e_timeout <<<"$(bench_parse "$raw")"
  echo
  awk -v n="$requests" -v s="$secs" -v p50="$p50" -v p99="$p99" \
    'BEGIN {printf "wrk: %d requests in %.1f s, %.0f req/s, p50 %.3f ms, p99 %.3f ms\n", n, s, n / s, p50, p99}'
  if [ $((e_status + e_connect + e_read + e_write + e_timeout)) -gt 0 ]; then
    echo "!!! ERRORS: $e_status non-2xx answers; socket errors: connect $e_connect, read $e_read," \
      "write $e_write, timeout $e_timeout (of $requests requests)"
    exit 1
  fi
  BENCH_SUSTAIN_REQUESTS=$requests
}

# CPU time (user + system, clock ticks) used so far by the processes in
# BENCH_CPU_PIDS and their children (a tcp ingress's workers): bench_round
# prints what a measured run cost per request when the caller sets it.
BENCH_CLK_TCK=$(getconf CLK_TCK)
bench_ticks() {
  local pid p t=0 v
  for pid in ${BENCH_CPU_PIDS:-}; do
    for p in $pid $(pgrep -P "$pid" || true); do
      v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
      t=$((t + v))
    done
  done
  echo "$t"
}

# bench_round SYSTEM PATH CONNS DURATION ROUND PORT...: a warm-up, then one
# measured wrk run against the servers on PORT...; with BENCH_REDIS_PORT set,
# Redis command counts are reset before it and read after it. Appends a row to
# $BENCH_WORK/results.tsv and prints a line; errors are printed loudly.
bench_round() {
  local system=$1 path=$2 conns=$3 duration=$4 round=$5
  shift 5
  local raw=$BENCH_WORK/wrk.txt result cmds=$'-\t-' ticks cpu=-
  bench_wrk_cmd "$path" "$conns" "$BENCH_WARMUP" "$@"
  "${BENCH_WRK[@]}" >/dev/null 2>&1 || true
  bench_wrk_cmd "$path" "$conns" "$duration" "$@"
  [ -n "${BENCH_REDIS_PORT:-}" ] && bench_redis config resetstat >/dev/null
  ticks=$(bench_ticks)
  if ! "${BENCH_WRK[@]}" >"$raw" 2>&1; then
    echo "!!! wrk failed against $system:" >&2
    cat "$raw" >&2
    exit 1
  fi
  result=$(bench_parse "$raw")
  local requests secs p50 p99 e_status e_connect e_read e_write e_timeout
  read -r requests secs p50 p99 e_status e_connect e_read e_write e_timeout <<<"$result"
  [ -n "${BENCH_REDIS_PORT:-}" ] && cmds=$(bench_redis_cmds "$requests")
  [ -n "${BENCH_CPU_PIDS:-}" ] && [ "$requests" -gt 0 ] &&
    cpu=$((($(bench_ticks) - ticks) * 1000000 / BENCH_CLK_TCK / requests))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$conns" "$BENCH_WRK_THREADS" "$duration" "$system" "$round" \
    "${result// /$'\t'}" "$cmds" "$cpu" >>"$BENCH_WORK/results.tsv"
  python3 -c '
import sys
system, rnd, conns, requests, secs, p50, p99, cmds, cpu = sys.argv[1:10]
rps = int(requests) / float(secs) if float(secs) > 0 else 0.0
line = f"  round {rnd}  c={conns}  {system:<30} {rps:>10,.0f} req/s  p50 {float(p50):8.3f} ms  p99 {float(p99):8.3f} ms"
if cpu != "-":
    line += f"  CPU {int(cpu):>4} us/request"
if cmds != "-":
    line += f"  {cmds} Redis commands/request"
print(line)
' "$system" "$round" "$conns" "$requests" "$secs" "$p50" "$p99" "${cmds%%$'\t'*}" "$cpu"
  if [ $((e_status + e_connect + e_read + e_write + e_timeout)) -gt 0 ]; then
    BENCH_ERRORS=$((BENCH_ERRORS + 1))
    echo "!!! ERRORS: $system, c=$conns, round $round: $e_status non-2xx answers;" \
      "socket errors: connect $e_connect, read $e_read, write $e_write, timeout $e_timeout (of $requests requests)"
  fi
}

# bench_summary RATIO_NAME: per connection count, each system's best round
# (highest requests/s among the rounds without errors, or among all when every
# round had errors), the ratios of the second system to the first (printed as
# "ratio RATIO_NAME"), and, with Redis, the commands per request of those runs.
bench_summary() {
  python3 - "$BENCH_WORK/results.tsv" "$1" <<'PY'
import sys
ratio_name = sys.argv[2]
rows = []
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    r = dict(conns=int(f[0]), threads=int(f[1]), duration=f[2], system=f[3], round=int(f[4]),
             requests=int(f[5]), secs=float(f[6]), p50=float(f[7]), p99=float(f[8]),
             non2xx=int(f[9]), socket=sum(map(int, f[10:14])), cmds=f[14], breakdown=f[15],
             cpu=f[16] if len(f) > 16 else "-")
    r["rps"] = r["requests"] / r["secs"] if r["secs"] > 0 else 0.0
    r["errors"] = r["non2xx"] + r["socket"]
    rows.append(r)

def ms(v):
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"

def ratio(b, a):
    return f"{b / a:.2f}x" if a > 0 else "n/a"

conns_order = list(dict.fromkeys(r["conns"] for r in rows))
systems = list(dict.fromkeys(r["system"] for r in rows))
redis = any(r["cmds"] != "-" for r in rows)
cpu = any(r["cpu"] != "-" for r in rows)
width = max(len(s) for s in systems + ["system"])
for c in conns_order:
    runs = [r for r in rows if r["conns"] == c]
    rounds = max(r["round"] for r in runs)
    t = runs[0]["threads"]
    real = t * (c // t)
    note = f" ({real} open: {c // t} per thread)" if real != c else ""
    print()
    print(f"c={c}: wrk -t{t} -c{c} -d{runs[0]['duration']}{note}, best of {rounds} round(s) by requests/s")
    head = f"  {'system':<{width}} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}"
    if cpu:
        head += f" {'CPU us/req':>11}"
    if redis:
        head += f" {'Redis cmds/req':>15}"
    print(head + "  errors")
    best = {}
    for s in systems:
        mine = [r for r in runs if r["system"] == s]
        if not mine:
            continue
        clean = [r for r in mine if r["errors"] == 0]
        b = max(clean or mine, key=lambda r: r["rps"])
        best[s] = b
        line = f"  {s:<{width}} {b['rps']:>10,.0f} {ms(b['p50']):>9} {ms(b['p99']):>9}"
        if cpu:
            line += f" {b['cpu']:>11}"
        if redis:
            line += f" {b['cmds']:>15}"
        if b["errors"]:
            err = f"!!! {b['non2xx']} non-2xx, {b['socket']} socket errors in {b['requests']} requests"
        else:
            err = "none"
        bad = sum(1 for r in mine if r["errors"])
        if bad:
            err += f" (!!! {bad} of {len(mine)} rounds had errors)"
        print(line + "  " + err)
    if len(best) >= 2:
        a, b = best[systems[0]], best[systems[1]]
        print(f"  ratio {ratio_name}: throughput {ratio(b['rps'], a['rps'])},"
              f" p50 {ratio(b['p50'], a['p50'])}, p99 {ratio(b['p99'], a['p99'])}")
    # Any further system against the first two.
    for s in systems[2:]:
        if s not in best:
            continue
        for other in systems[:2]:
            if other in best:
                x, o = best[s], best[other]
                print(f"  ratio {s} / {other}: throughput {ratio(x['rps'], o['rps'])},"
                      f" p50 {ratio(x['p50'], o['p50'])}, p99 {ratio(x['p99'], o['p99'])}")
    if redis:
        print("  Redis commands per request, in those runs:")
        for s, b in best.items():
            if b["cmds"] != "-":
                print(f"    {s}: {b['cmds']} ({b['breakdown']})")
bad = sum(1 for r in rows if r["errors"])
if bad:
    print()
    print(f"!!! {bad} of {len(rows)} measured runs had non-2xx answers or socket errors: their numbers measure an error path")
PY
}

# === Single-run helpers (bench-tracing) ===

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
