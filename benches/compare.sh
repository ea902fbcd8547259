#!/usr/bin/env bash
# Side-by-side comparison of dso-proxy with HAProxy (mode tcp), nginx stream, socat and a
# direct connection, on loopback, in one run. Prints Markdown tables with medians, ratios to
# direct and the targets of issue 2 (see docs/performance.md for a recorded run).
#
# Usage: benches/compare.sh [--quick] [--rounds N] [--no-install] [--no-build]
#                           [--idle-conns N] [--base-port PORT]
#
# What it does:
#   1. installs what is missing with apt (root only): haproxy, nginx + libnginx-mod-stream,
#      socat, iperf3, redis-server, redis-tools, python3;
#   2. builds dso-proxy in release (CARGO_TARGET_DIR, default <repo>/target), or uses
#      DSO_PROXY_BIN;
#   3. starts iperf3 -s and redis-server as the backends and the four proxies, each on its own
#      loopback ports with its own config in a temp dir; all are killed on exit (trap);
#   4. for each round, for each load, runs every path in turn (the order rotates per round):
#        iperf1 / iperf4  iperf3 -t S with 1 and 4 streams; CPU % of the proxy process tree
#                         from /proc/PID/stat over the client's wall time, and the CPU % of
#                         iperf3's own client + server as iperf3 reports it
#        redis1 / redis50 redis-benchmark -t get,set at c=1 and c=50: rps and p50
#        cps              redis-benchmark -t get -c 50 -k 0: one connection per request, so
#                         requests/s = connections/s
#   5. records each proxy's RSS idle (before any load) and after the loads, then opens
#      --idle-conns idle connections through dso-proxy, HAProxy and nginx and records RSS;
#   6. prints the tables (benches/compare_tools.py summarize).
# --rounds 0 skips the loads: only RSS idle and the idle-connection probe.
# Every client runs bounded in count and under `timeout`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$repo/benches/compare_tools.py"

rounds=3
iperf_secs=5
redis1_n=20000
redis50_n=100000
cps_n=10000
idle_conns=10000
base_port=21000
install=1
build=1

usage() { sed -n '6,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) rounds=1 iperf_secs=2 redis1_n=3000 redis50_n=20000 cps_n=3000 idle_conns=2000 ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift ;;
    --idle-conns) idle_conns=${2:?--idle-conns needs a number}; shift ;;
    --base-port) base_port=${2:?--base-port needs a port}; shift ;;
    --no-install) install=0 ;;
    --no-build) build=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { echo "compare.sh: error: $*" >&2; exit 1; }

# --- 1. tools -----------------------------------------------------------------------------
nginx_stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
missing=()
for pair in haproxy:haproxy nginx:nginx socat:socat iperf3:iperf3 redis-server:redis-server \
            redis-benchmark:redis-tools python3:python3 timeout:coreutils; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ -f "$nginx_stream_module" ] || missing+=(libnginx-mod-stream)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$install" -eq 0 ] || [ "$(id -u)" -ne 0 ]; then
    die "missing packages: ${missing[*]}; hint: sudo apt-get install -y ${missing[*]}"
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 2. dso-proxy ----------------------------------------------------------------------------
if [ -n "${DSO_PROXY_BIN:-}" ]; then
  proxy_bin=$DSO_PROXY_BIN
else
  target_dir=${CARGO_TARGET_DIR:-$repo/target}
  if [ "$build" -eq 1 ]; then
    log "building dso-proxy (release) into $target_dir"
    (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p dataplane)
  fi
  proxy_bin=$target_dir/release/dso-proxy
fi
[ -x "$proxy_bin" ] || die "no dso-proxy at $proxy_bin; hint: cargo build --release -p dataplane"

# Enough descriptors for the idle-connection probe: the proxy and the probe each hold two per
# connection (client and upstream leg). Without permission to raise the hard limit, the probe
# shrinks to fit under it.
want_fds=$((idle_conns * 2 + 2048))
if ! ulimit -n "$want_fds" 2>/dev/null; then
  ulimit -n "$(ulimit -Hn)"
  fit=$(( ($(ulimit -n) - 2048) / 2 ))
  if [ "$fit" -lt "$idle_conns" ]; then
    log "descriptor limit $(ulimit -n): idle-connection probe reduced from $idle_conns to $fit"
    idle_conns=$(( fit > 0 ? fit : 0 ))
  fi
fi
fds=$(ulimit -n)

# --- 3. backends and proxies ---------------------------------------------------------------
work=$(mktemp -d /tmp/dso-compare.XXXXXX)
results=$work/results.tsv
: >"$results"
declare -A pids=()   # name -> "PID [PID...]" of the process(es) to measure and kill

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local all=()
  for name in "${!pids[@]}"; do all+=(${pids[$name]}); done
  set +e
  [ ${#all[@]} -gt 0 ] && kill -TERM "${all[@]}" 2>/dev/null
  for _ in $(seq 50); do
    local alive=0
    for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  [ ${#all[@]} -gt 0 ] && kill -KILL "${all[@]}" 2>/dev/null
  wait 2>/dev/null
  if [ "$status" -ne 0 ]; then
    log "failed (exit $status); logs kept in $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Port plan: the backends, then per proxy one port each for iperf3, redis and the idle probe;
# the idle probe's holder gets its own port. redis listens on several loopback addresses so
# each path's connections to it have their own 4-tuples (the cps load opens tens of
# thousands and leaves them in TIME_WAIT).
iperf_port=$((base_port + 1))
redis_port=$((base_port + 2))
hold_port=$((base_port + 3))
declare -A path_iperf=([direct]=$iperf_port) path_redis=([direct]=$redis_port) path_idle=()
declare -A redis_ip=([direct]=127.0.0.1 [dso-proxy]=127.0.0.2 [haproxy]=127.0.0.3 \
  [nginx]=127.0.0.4 [socat]=127.0.0.5)
proxies=(dso-proxy haproxy nginx socat)
n=1
for p in "${proxies[@]}"; do
  path_iperf[$p]=$((base_port + 10 * n + 1))
  path_redis[$p]=$((base_port + 10 * n + 2))
  path_idle[$p]=$((base_port + 10 * n + 3))
  n=$((n + 1))
done

wait_port() {  # PORT NAME: until something accepts on 127.0.0.1:PORT, at most 10 s
  local deadline=$((SECONDS + 10))
  until timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$2 did not accept on 127.0.0.1:$1 within 10 s (logs: $work)"
    sleep 0.05
  done
}

start() {  # NAME LOG CMD...: start in the background and remember the PID
  local name=$1 logf=$2
  shift 2
  "$@" >"$logf" 2>&1 &
  pids[$name]="${pids[$name]:-} $!"
}

port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
for port in $iperf_port $redis_port $hold_port "${path_iperf[@]}" "${path_redis[@]}"; do
  port_free "$port" || die "127.0.0.1:$port is in use; hint: pass --base-port"
done

log "starting backends in $work"
start iperf3-server "$work/iperf3.log" iperf3 -s -B 127.0.0.1 -p "$iperf_port"
start redis-server "$work/redis.log" redis-server --port "$redis_port" \
  --bind "${redis_ip[@]}" --save '' --appendonly no --protected-mode no \
  --dir "$work" --maxclients 10000
wait_port "$iperf_port" iperf3
wait_port "$redis_port" redis-server

log "starting proxies"
start dso-proxy "$work/dso-proxy.log" "$proxy_bin" --log warn \
  --route "iperf=127.0.0.1:${path_iperf[dso-proxy]}=127.0.0.1:$iperf_port" \
  --route "redis=127.0.0.1:${path_redis[dso-proxy]}=${redis_ip[dso-proxy]}:$redis_port" \
  --route "idle=127.0.0.1:${path_idle[dso-proxy]}=127.0.0.1:$hold_port" \
  --max-connections $((idle_conns + 1024))

cat >"$work/haproxy.cfg" <<EOF
global
    maxconn $((idle_conns + 512))
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
listen iperf
    bind 127.0.0.1:${path_iperf[haproxy]}
    server s 127.0.0.1:$iperf_port
listen redis
    bind 127.0.0.1:${path_redis[haproxy]}
    server s ${redis_ip[haproxy]}:$redis_port
listen idle
    bind 127.0.0.1:${path_idle[haproxy]}
    server s 127.0.0.1:$hold_port
EOF
start haproxy "$work/haproxy.log" haproxy -db -f "$work/haproxy.cfg"

cat >"$work/nginx.conf" <<EOF
load_module $nginx_stream_module;
daemon off;
worker_processes auto;
worker_rlimit_nofile $fds;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections $((idle_conns * 2 + 1024)); }
stream {
    server { listen 127.0.0.1:${path_iperf[nginx]}; proxy_pass 127.0.0.1:$iperf_port; }
    server { listen 127.0.0.1:${path_redis[nginx]}; proxy_pass ${redis_ip[nginx]}:$redis_port; }
    server { listen 127.0.0.1:${path_idle[nginx]}; proxy_pass 127.0.0.1:$hold_port; }
}
EOF
start nginx "$work/nginx.log" nginx -p "$work" -e "$work/nginx-error.log" -c "$work/nginx.conf"

# socat forks one process per connection; both listeners count as the socat "proxy". Its
# default listen backlog (5) resets clients of the c=50 loads, hence backlog=1024.
start socat "$work/socat-iperf.log" socat \
  "TCP-LISTEN:${path_iperf[socat]},bind=127.0.0.1,fork,reuseaddr,nodelay,backlog=1024" \
  "TCP:127.0.0.1:$iperf_port,nodelay"
start socat "$work/socat-redis.log" socat \
  "TCP-LISTEN:${path_redis[socat]},bind=127.0.0.1,fork,reuseaddr,nodelay,backlog=1024" \
  "TCP:${redis_ip[socat]}:$redis_port,nodelay"

for p in "${proxies[@]}"; do
  wait_port "${path_iperf[$p]}" "$p"
  wait_port "${path_redis[$p]}" "$p"
done

# A load that fails on one path is logged and left out of the medians (its cell shows the
# rounds that did succeed, or "–"); the list is printed with the tables.
failures=()
fail() { failures+=("$1"); log "giving up on $1"; }

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$results"; }  # round test path metric value

# RSS idle: after the readiness probes above, before any load.
for p in "${proxies[@]}"; do
  record 0 rss "$p" idle_kib "$(python3 "$tools" rss ${pids[$p]})"
done

# --- 4. loads -----------------------------------------------------------------------------
cpu_ticks() { [ "$1" = direct ] && echo 0 || python3 "$tools" ticks ${pids[$1]}; }

run_iperf() {  # ROUND TEST STREAMS PATH
  local round=$1 test=$2 streams=$3 path=$4 out=$work/iperf.json t0 t1 c0 c1 try
  for try in 1 2 3; do
    c0=$(cpu_ticks "$path"); t0=$(date +%s.%N)
    if timeout $((iperf_secs + 30)) iperf3 -c 127.0.0.1 -p "${path_iperf[$path]}" \
        -t "$iperf_secs" -P "$streams" -J >"$out" 2>"$work/iperf.err"; then
      t1=$(date +%s.%N); c1=$(cpu_ticks "$path")
      read -r gbps endpoints_cpu < <(python3 "$tools" iperf "$out")
      record "$round" "$test" "$path" gbps "$gbps"
      record "$round" "$test" "$path" endpoints_cpu_pct "$endpoints_cpu"
      if [ "$path" != direct ]; then
        record "$round" "$test" "$path" cpu_pct \
          "$(awk -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v t0="$t0" -v t1="$t1" \
            'BEGIN { printf "%.1f", c * 100 / hz / (t1 - t0) }')"
      fi
      return 0
    fi
    # iperf3 -s serves one test at a time and may still be closing the previous one.
    log "iperf3 via $path failed (try $try): $(head -c 300 "$out" "$work/iperf.err" | tr '\n' ' ')"
    sleep 1
  done
  fail "iperf3 via $path (round $round, $streams streams)"
}

run_redis() {  # ROUND TEST PATH ARGS...
  local round=$1 test=$2 path=$3 out=$work/redis.csv try
  shift 3
  for try in 1 2; do
    if timeout 120 redis-benchmark -h 127.0.0.1 -p "${path_redis[$path]}" --csv "$@" \
        >"$out" 2>"$work/redis.err"; then
      python3 "$tools" redis "$out" | while read -r name rps p50; do
        if [ "$test" = cps ]; then
          record "$round" cps "$path" cps "$rps"
        else
          record "$round" "$test" "$path" "${name}_rps" "$rps"
          record "$round" "$test" "$path" "${name}_p50_ms" "$p50"
        fi
      done
      return 0
    fi
    log "redis-benchmark $test via $path failed (try $try): $(grep -v WARNING "$work/redis.err" \
      | head -c 300 | tr '\n' ' ')"
    sleep 1
  done
  fail "redis-benchmark $test via $path (round $round)"
}

paths=(direct "${proxies[@]}")
for round in $(seq "$rounds"); do
  # Rotate the order every round so no path always runs first or right after another.
  shift_by=$(( (round - 1) % ${#paths[@]} ))
  order=("${paths[@]:$shift_by}" "${paths[@]:0:$shift_by}")
  log "round $round/$rounds, order: ${order[*]}"
  for p in "${order[@]}"; do run_iperf "$round" iperf1 1 "$p"; done
  for p in "${order[@]}"; do run_iperf "$round" iperf4 4 "$p"; done
  for p in "${order[@]}"; do run_redis "$round" redis1 "$p" -t get,set -c 1 -n "$redis1_n"; done
  for p in "${order[@]}"; do run_redis "$round" redis50 "$p" -t get,set -c 50 -n "$redis50_n"; done
  for p in "${order[@]}"; do run_redis "$round" cps "$p" -t get -c 50 -k 0 -n "$cps_n"; done
done

for p in "${proxies[@]}"; do
  record 0 rss "$p" after_kib "$(python3 "$tools" rss ${pids[$p]})"
done

# --- 5. idle connections ------------------------------------------------------------------
# socat is left out: it would fork one process per connection.
if [ "$idle_conns" -gt 0 ]; then
  for p in dso-proxy haproxy nginx; do
    log "holding $idle_conns idle connections through $p"
    line=$(timeout 180 python3 "$tools" idle --listen "127.0.0.1:${path_idle[$p]}" \
      --hold-port "$hold_port" --count "$idle_conns" --pids ${pids[$p]}) \
      || { fail "idle-connection probe through $p: $line"; continue; }
    for kv in $line; do record 0 idle "$p" "${kv%%=*}" "${kv#*=}"; done
  done
fi

# --- 6. report ----------------------------------------------------------------------------
echo
echo "## Machine"
echo
echo "- $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "- kernel $(uname -r); load before the run: see docs/performance.md"
echo "- dso-proxy $("$proxy_bin" --version | awk '{print $2}'), $(haproxy -v | head -1 | cut -d' ' -f1-3)," \
  "$(nginx -v 2>&1 | cut -d' ' -f3), socat $(socat -V | sed -n 2p | awk '{print $3}')," \
  "iperf $(iperf3 --version | head -1 | awk '{print $2}'), redis $(redis-server --version | awk '{print $3}' | cut -d= -f2)"
echo "- rounds=$rounds iperf=${iperf_secs}s redis c=1 n=$redis1_n, c=50 n=$redis50_n, cps n=$cps_n," \
  "idle conns=$idle_conns"
echo
python3 "$tools" summarize "$results"
if [ ${#failures[@]} -gt 0 ]; then
  echo
  echo "Failed loads (left out of the medians):"
  printf -- '- %s\n' "${failures[@]}"
fi
cp "$results" "${COMPARE_RESULTS:-/tmp/dso-compare-results.tsv}"
log "raw results: ${COMPARE_RESULTS:-/tmp/dso-compare-results.tsv}"
