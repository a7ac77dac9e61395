#!/usr/bin/env bash
# The benchmark harness of hyper-remote-client (issue 6): bare hyper-util, this crate's Server,
# axum and actix-web, on the same machine, interleaved, server on core 0 and load generator on
# core 1. See BENCHMARKS.md at the repository root for the method and the latest table.
#
#   bash benches/run.sh                      # 5 rounds of 5 s per workload and server
#   ROUNDS=2 DURATION=2 bash benches/run.sh  # a quick run
#
# HTTP/3 (bare h3-quinn, the crate over a QuicListener, against HTTP/2 over TLS; idle QUIC
# connections) is in benches/h3.sh, a script of its own (UDP servers, its own build).
#
# Environment:
#   ROUNDS=5        rounds; every round runs every server once per workload, in turn
#   DURATION=5      seconds per load run (h2load -D, wrk -d)
#   HS_N=4000       TLS handshakes per handshake run (h2load -n)
#   IDLE_CONNS=1000 idle connections per idle-memory run
#   IDLE_ROUNDS     rounds of the idle-memory measurement (default: ROUNDS)
#   WORKLOADS       which workloads, in order (default: all):
#                   h2c pipelined keepalive churn tls-h2 tls-handshake idle idle-arrival sync
#                   idle: HTTP/1.1 and h2c idle connections opened 50 at a time (RSS and heap);
#                   idle-arrival: HTTP/1.1 idle connections arriving serially, connected all
#                   first then one request each (batched), or connected with no request;
#                   sync: one h2c connection with 64 streams of a handler that spins 100 µs
#                   (`/spin`), servers with 2 workers on cores 0,1, a light client beside it
#   SYNC_SERVERS    the servers of the sync workload (default: bare crate crate-spawn)
#   SERVERS         the plain servers to compare (default: bare crate axum actix); add
#                   crate-spawn (the crate with Options::http2_inline_streams off), or
#                   crate-before with BIN_BEFORE set to compare this crate with another build
#   BIN_BEFORE      release binaries of another tree (e.g. the previous commit), for crate-before
#   BENCH_RUNTIME   multi: the servers run on tokio's multi-thread runtime (one worker when
#                   pinned to one core) instead of current_thread
#   SERVER_CPUS=0   the cores the servers may run on (taskset -c); 0,1 with BENCH_RUNTIME=multi:
#                   two workers, sharing the cores with the load generator
#   LOAD_CPUS=1     the cores the load generator runs on
#   BASE_PORT=18180 the servers listen on 127.0.0.1:BASE_PORT+1..+12
#   OUT             where logs, raw.tsv and results.md go (default: a new /tmp/hrc-bench.XXXX)
#   CARGO_TARGET_DIR  where the release build goes (default: benches/target)
#   SKIP_BUILD=1    use the binaries already built in CARGO_TARGET_DIR
#
# Everything runs on 127.0.0.1. Every load run is bounded (h2load -D/-n, wrk -d, and `timeout`
# around each), and every server and client this script starts is killed on exit (trap).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
HS_N=${HS_N:-4000}
IDLE_CONNS=${IDLE_CONNS:-1000}
IDLE_ROUNDS=${IDLE_ROUNDS:-$ROUNDS}
WORKLOADS=${WORKLOADS:-h2c pipelined keepalive churn tls-h2 tls-handshake idle idle-arrival sync}
read -r -a SYNC_SERVERS <<<"${SYNC_SERVERS:-bare crate crate-spawn}"
BASE_PORT=${BASE_PORT:-18180}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/target}
OUT=${OUT:-$(mktemp -d /tmp/hrc-bench.XXXX)}
mkdir -p "$OUT/logs"
RAW=$OUT/raw.tsv
: >"$RAW"
BIN=$CARGO_TARGET_DIR/release

read -r -a SERVERS_PLAIN <<<"${SERVERS:-bare crate axum actix}"
export BENCH_RUNTIME=${BENCH_RUNTIME:-}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
SERVERS_TLS=(bare-tls crate-tls)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- cleanup: kill every process this script started --------------------------------------
declare -A PID=()       # server name -> pid (the long-running servers)
EXTRA_PIDS=()           # idle-memory servers and clients
cleanup() {
    local p i alive
    for p in "${PID[@]}" "${EXTRA_PIDS[@]}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null
    done
    for i in $(seq 20); do # wait up to 2 s for them to go, then SIGKILL what is left
        alive=0
        for p in "${PID[@]}" "${EXTRA_PIDS[@]}"; do
            [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
    for p in "${PID[@]}" "${EXTRA_PIDS[@]}"; do
        [ -n "$p" ] && kill -9 "$p" 2>/dev/null
    done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# --- tools -------------------------------------------------------------------------------
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
apt_install() {
    $SUDO apt-get install -y "$@" >"$OUT/logs/apt.log" 2>&1 && return 0
    $SUDO apt-get update >>"$OUT/logs/apt.log" 2>&1
    $SUDO apt-get install -y "$@" >>"$OUT/logs/apt.log" 2>&1
}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt_install "${need[@]}" || die "apt-get install ${need[*]} failed (see $OUT/logs/apt.log)"
fi

# --- build -------------------------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
    log "building the servers (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    # Two builds: actix-web turns on `tracing/log`, a cost every other server of its binary
    # would pay (see benches/Cargo.toml).
    { cargo build --release --manifest-path "$HERE/Cargo.toml" &&
        cargo build --release --manifest-path "$HERE/Cargo.toml" --features actix --bin bench-actix
    } >"$OUT/logs/build.log" 2>&1 ||
        { tail -30 "$OUT/logs/build.log"; die "cargo build failed"; }
fi
[ -x "$BIN/bench-server" ] && [ -x "$BIN/bench-idle" ] || die "no binaries in $BIN"
case " ${SERVERS_PLAIN[*]} " in
    *" actix "*) [ -x "$BIN/bench-actix" ] || die "no bench-actix in $BIN" ;;
esac

# 1 000 idle connections and connection churn need descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((IDLE_CONNS + 200)) ] ||
    die "ulimit -n is $(ulimit -n), need more than $((IDLE_CONNS + 200))"

# --- servers -----------------------------------------------------------------------------
port_of() {
    case $1 in
        bare) echo $((BASE_PORT + 1)) ;; crate) echo $((BASE_PORT + 2)) ;;
        bare-tls) echo $((BASE_PORT + 3)) ;; crate-tls) echo $((BASE_PORT + 4)) ;;
        axum) echo $((BASE_PORT + 5)) ;; actix) echo $((BASE_PORT + 6)) ;;
        crate-before) echo $((BASE_PORT + 7)) ;; crate-spawn) echo $((BASE_PORT + 8)) ;;
    esac
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_server MODE PORT LOGFILE: starts it on core 0, waits (at most 10 s) for the port; prints
# the pid.
start_server() {
    local mode=$1 port=$2 logf=$3 pid i
    port_open "$port" && { log "port $port is already in use"; return 1; }
    if [ "$mode" = crate-before ]; then
        [ -n "${BIN_BEFORE:-}" ] || { log "crate-before needs BIN_BEFORE"; return 1; }
        taskset -c "$SERVER_CPUS" "$BIN_BEFORE/bench-server" crate "$port" >"$logf" 2>&1 &
    elif [ "$mode" = actix ]; then
        taskset -c "$SERVER_CPUS" "$BIN/bench-actix" actix "$port" >"$logf" 2>&1 &
    else
        taskset -c "$SERVER_CPUS" "$BIN/bench-server" "$mode" "$port" >"$logf" 2>&1 &
    fi
    pid=$!
    for i in $(seq 100); do
        port_open "$port" && { echo "$pid"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null
    log "$mode did not start on port $port: $(tail -3 "$logf")"
    return 1
}

# ensure_server NAME: the long-running server NAME is up (started or restarted).
ensure_server() {
    local name=$1 pid=${PID[$1]:-}
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 0; fi
    [ -n "$pid" ] && log "WARNING: server $name (pid $pid) died; restarting it (see $OUT/logs/server.$name.log)"
    pid=$(start_server "$name" "$(port_of "$name")" "$OUT/logs/server.$name.log") || die "cannot start $name"
    PID[$name]=$pid
}

cpu_ticks() { # utime + stime of a live process, in clock ticks (all its threads)
    local f
    read -r -a f <"/proc/$1/stat" || { echo 0; return; }
    echo $((f[13] + f[14]))
}
sys_busy() { # busy ticks of all CPUs: user nice system irq softirq steal
    local c u n s idle io irq sirq st rest
    read -r c u n s idle io irq sirq st rest </proc/stat
    echo $((u + n + s + irq + sirq + st))
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }

# run_load WORKLOAD SERVER ROUND COMMAND...: runs the load generator on core 1 and appends a
# line to raw.tsv: workload server round log server_ticks loadgen_ticks other_ticks wall exit.
run_load() {
    local wl=$1 srv=$2 round=$3
    shift 3
    ensure_server "$srv"
    local pid=${PID[$srv]} logf="$OUT/logs/$wl.$srv.$round.log"
    local s0 b0 t0 s1 b1 t1 lg rc
    s0=$(cpu_ticks "$pid"); b0=$(sys_busy); t0=$(now)
    # The wrapping bash reports the CPU time of the load generator it waited for (cutime +
    # cstime of its own /proc entry), so the CPU used by anything else can be told apart.
    taskset -c "$LOAD_CPUS" bash -c '
        timeout "$TMO" "$@"; rc=$?
        read -r -a st < /proc/$$/stat
        echo "LOADGEN_TICKS $((st[15] + st[16]))"
        exit $rc' _ "$@" >"$logf" 2>&1
    rc=$?
    s1=$(cpu_ticks "$pid"); b1=$(sys_busy); t1=$(now)
    lg=$(awk '/^LOADGEN_TICKS/ {print $2}' "$logf")
    lg=${lg:-0}
    kill -0 "$pid" 2>/dev/null || rc=99
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$wl" "$srv" "$round" "$logf" $((s1 - s0)) "$lg" \
        $((b1 - b0 - (s1 - s0) - lg)) "$(awk "BEGIN {print $t1 - $t0}")" "$rc" >>"$RAW"
    [ "$rc" = 0 ] || log "WARNING: $wl $srv round $round: exit $rc (see $logf)"
    sleep 0.5
}
export TMO=$((DURATION + 60))

url() { # SERVER -> its URL
    case $1 in *-tls) echo "https://127.0.0.1:$(port_of "$1")/" ;; *) echo "http://127.0.0.1:$(port_of "$1")/" ;; esac
}

workload() { # WORKLOAD ROUND: one round of a workload over its servers, in turn
    local wl=$1 round=$2 srv
    case $wl in
        h2c)
            for srv in "${SERVERS_PLAIN[@]}"; do
                run_load "$wl" "$srv" "$round" h2load -t1 -c16 -m32 -D "$DURATION" "$(url "$srv")"
            done ;;
        pipelined)
            for srv in "${SERVERS_PLAIN[@]}"; do
                run_load "$wl" "$srv" "$round" wrk -t1 -c64 -d"${DURATION}s" -s "$HERE/pipeline.lua" "$(url "$srv")" -- 16
            done ;;
        keepalive)
            for srv in "${SERVERS_PLAIN[@]}"; do
                run_load "$wl" "$srv" "$round" wrk -t1 -c64 -d"${DURATION}s" "$(url "$srv")"
            done ;;
        churn)
            for srv in "${SERVERS_PLAIN[@]}"; do
                run_load "$wl" "$srv" "$round" wrk -t1 -c64 -d"${DURATION}s" -H 'Connection: close' "$(url "$srv")"
            done ;;
        tls-h2)
            for srv in "${SERVERS_TLS[@]}"; do
                run_load "$wl" "$srv" "$round" h2load -t1 -c16 -m32 -D "$DURATION" "$(url "$srv")"
            done ;;
        tls-handshake)
            for srv in "${SERVERS_TLS[@]}"; do
                run_load "$wl" "$srv" "$round" h2load -t1 -c16 -n "$HS_N" --h1 -H 'Connection: close' "$(url "$srv")"
            done ;;
        idle)
            for srv in "${SERVERS_PLAIN[@]}"; do
                idle_run h1 "$srv" "$round"
                idle_run h2 "$srv" "$round"
            done ;;
        idle-arrival)
            for arrival in serial batched connect; do
                for srv in "${SERVERS_PLAIN[@]}"; do
                    idle_run h1 "$srv" "$round" "$arrival"
                done
            done ;;
        sync)
            for srv in "${SYNC_SERVERS[@]}"; do
                sync_run "$srv" "$round"
            done ;;
        *) die "unknown workload $wl" ;;
    esac
}

# idle_run h1|h2 SERVER ROUND [ARRIVAL]: a fresh server (counting its heap), one warm-up
# connection, RSS and live heap bytes; then IDLE_CONNS idle connections arriving as ARRIVAL says
# (bench-idle's BENCH_ARRIVAL: concurrent, the default, serial, batched, connect), RSS and heap
# again after 1 s. Appends to raw.tsv:
# idle-PROTO[-ARRIVAL] server round log rss_before rss_after count heap_growth_bytes exit.
idle_run() {
    local proto=$1 srv=$2 round=$3 arrival=${4:-concurrent} port=$((BASE_PORT + 11)) spid cpid i rc=0
    local before after heap0 heap1 heap name=idle-$proto slog
    [ "$arrival" = concurrent ] || name=idle-$proto-$arrival
    local logf="$OUT/logs/$name.$srv.$round.log"
    slog="$OUT/logs/idle-server.$srv.$name.$round.log"
    spid=$(BENCH_COUNT_ALLOC=1 start_server "$srv" "$port" "$slog") || die "cannot start $srv for idle"
    EXTRA_PIDS+=("$spid")
    timeout 20 taskset -c 1 "$BIN/bench-idle" "$proto" "127.0.0.1:$port" 1 0 >"$logf" 2>&1 || rc=1
    sleep 0.5
    before=$(rss_kib "$spid")
    heap0=$(live_heap "$spid" "$slog")
    BENCH_ARRIVAL=$arrival taskset -c 1 "$BIN/bench-idle" "$proto" "127.0.0.1:$port" "$IDLE_CONNS" 10 >>"$logf" 2>&1 &
    cpid=$!
    EXTRA_PIDS+=("$cpid")
    for i in $(seq 300); do # at most 30 s
        grep -q "^ready $IDLE_CONNS" "$logf" && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "^ready $IDLE_CONNS" "$logf" || rc=1
    sleep 1
    after=$(rss_kib "$spid")
    heap1=$(live_heap "$spid" "$slog")
    heap=-
    [ -n "$heap0" ] && [ -n "$heap1" ] && heap=$((heap1 - heap0))
    kill -0 "$spid" 2>/dev/null || rc=99
    kill "$cpid" "$spid" 2>/dev/null
    wait "$cpid" "$spid" 2>/dev/null
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$srv" "$round" "$logf" "${before:-0}" "${after:-0}" \
        "$IDLE_CONNS" "$heap" "$rc" >>"$RAW"
    [ "$rc" = 0 ] || log "WARNING: $name $srv round $round failed (see $logf)"
    sleep 0.3
}

# live_heap PID LOG: the live heap bytes of a server started with BENCH_COUNT_ALLOC=1 (its
# counting allocator prints them at SIGUSR1); empty if it does not answer within 2 s.
live_heap() {
    local pid=$1 logf=$2 n i
    n=$(grep -c '^alloc ' "$logf")
    kill -USR1 "$pid" 2>/dev/null || return 0
    for i in $(seq 40); do
        [ "$(grep -c '^alloc ' "$logf")" -gt "$n" ] && break
        sleep 0.05
    done
    grep '^alloc ' "$logf" | tail -1 | sed -n 's/.*live=\(-*[0-9]*\).*/\1/p' | awk -v n="$n" 'NR == 1 && n >= 0 {print}'
}

# sync_run SERVER ROUND: one h2c connection carrying 64 streams of `/spin` (100 µs of
# synchronous work in the handler's future), against a fresh server on the multi-thread runtime
# with 2 workers (cores 0,1), and a light client (one stream at a time, `GET /`) on a connection
# beside it. No core is spare: both load generators share the 2 cores with the server. Appends
# the heavy run (workload sync) and the light one (sync-light) to raw.tsv.
sync_run() {
    local srv=$1 round=$2 port=$((BASE_PORT + 12)) spid lpid rc=0 s0 s1 b0 b1 t0 t1
    local logf="$OUT/logs/sync.$srv.$round.log" llog="$OUT/logs/sync-light.$srv.$round.log"
    spid=$(SERVER_CPUS=0,1 BENCH_RUNTIME=multi start_server "$srv" "$port" "$OUT/logs/sync-server.$srv.log") ||
        die "cannot start $srv for sync"
    EXTRA_PIDS+=("$spid")
    timeout 20 h2load -t1 -c1 -m64 -n 2000 "http://127.0.0.1:$port/spin" >/dev/null 2>&1 # warm-up
    s0=$(cpu_ticks "$spid"); b0=$(sys_busy); t0=$(now)
    timeout "$TMO" taskset -c 0,1 h2load -t1 -c1 -m1 -D "$DURATION" "http://127.0.0.1:$port/" >"$llog" 2>&1 &
    lpid=$!
    timeout "$TMO" taskset -c 0,1 h2load -t1 -c1 -m64 -D "$DURATION" "http://127.0.0.1:$port/spin" >"$logf" 2>&1 || rc=$?
    wait "$lpid" || rc=$?
    s1=$(cpu_ticks "$spid"); b1=$(sys_busy); t1=$(now)
    kill -0 "$spid" 2>/dev/null || rc=99
    kill "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' sync "$srv" "$round" "$logf" $((s1 - s0)) 0 \
        $((b1 - b0 - (s1 - s0))) "$(awk "BEGIN {print $t1 - $t0}")" "$rc" >>"$RAW"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' sync-light "$srv" "$round" "$llog" 0 0 0 \
        "$(awk "BEGIN {print $t1 - $t0}")" "$rc" >>"$RAW"
    [ "$rc" = 0 ] || log "WARNING: sync $srv round $round: exit $rc (see $logf)"
    sleep 0.5
}

# --- run ---------------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel: $(uname -sr)"
    echo "rounds: $ROUNDS, duration: ${DURATION}s, handshakes per run: $HS_N, idle connections: $IDLE_CONNS, idle rounds: $IDLE_ROUNDS"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "h2load: $(h2load --version 2>&1 | head -1)"
    echo "rustc: $(rustc --version 2>/dev/null)"
    echo "runtime: ${BENCH_RUNTIME:-current_thread}; server cores: $SERVER_CPUS; load generator cores: $LOAD_CPUS"
    if commit=$(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null); then
        git -C "$HERE/.." diff --quiet HEAD -- src Cargo.toml 2>/dev/null || commit="$commit + uncommitted changes in src/ or Cargo.toml"
        echo "crate: $commit"
    fi
    echo "loadavg at start: $(cat /proc/loadavg)"
} >"$OUT/meta.txt"
cat "$OUT/meta.txt" >&2
log "results in $OUT"

needs_persistent=0
for wl in $WORKLOADS; do
    case $wl in idle | idle-arrival | sync) ;; *) needs_persistent=1 ;; esac
done
if [ "$needs_persistent" = 1 ]; then
    for srv in "${SERVERS_PLAIN[@]}" "${SERVERS_TLS[@]}"; do
        ensure_server "$srv"
    done
    # Warm-up: one second of keep-alive load on each (results discarded).
    for srv in "${SERVERS_PLAIN[@]}"; do
        timeout 10 taskset -c 1 wrk -t1 -c16 -d1s "$(url "$srv")" >/dev/null 2>&1
    done
    for srv in "${SERVERS_TLS[@]}"; do
        timeout 10 taskset -c 1 h2load -t1 -c4 -m8 -n 2000 "$(url "$srv")" >/dev/null 2>&1
    done
fi

for wl in $WORKLOADS; do
    rounds=$ROUNDS
    case $wl in idle | idle-arrival) rounds=$IDLE_ROUNDS ;; esac
    for round in $(seq "$rounds"); do
        log "$wl: round $round/$rounds"
        workload "$wl" "$round"
    done
done
echo "loadavg at end: $(cat /proc/loadavg)" >>"$OUT/meta.txt"

python3 "$HERE/report.py" "$OUT" | tee "$OUT/results.md"
log "raw results: $RAW; table: $OUT/results.md"
