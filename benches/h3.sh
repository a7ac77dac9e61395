#!/usr/bin/env bash
# HTTP/3 benchmarks (issue 26): bare h3-quinn against this crate's Server over a QuicListener,
# and HTTP/3 against HTTP/2 over TLS, same handler, interleaved, server on core 0 and load
# generator on core 1; then idle memory per QUIC connection. Results in the format of run.sh
# (raw.tsv), rendered by report.py. See BENCHMARKS.md (HTTP/3, run E).
#
#   BENCH_RUNTIME=multi bash benches/h3.sh        # 5 rounds of 5 s, 3 idle rounds of 500
#   ROUNDS=2 DURATION=2 IDLE_ROUNDS=1 bash benches/h3.sh   # a quick run
#
# Environment:
#   ROUNDS=5        rounds of the load workload; every round runs every server once, in turn
#   DURATION=5      seconds per load run (bench-h3load SECS, h2load -D)
#   IDLE_CONNS=500  idle QUIC connections per idle-memory run
#   IDLE_ROUNDS=3   rounds of the idle-memory measurement
#   WORKLOADS       which, in order (default: h3 h3-idle):
#                   h3: per round h3-bare, h3-crate (bench-h3load load .. 16 32 DURATION), then
#                       bare-tls, crate-tls (h2load -t1 -c16 -m32 -D DURATION https://), all
#                       four served by bench-h3 (one build, the crate with its http3 feature);
#                       raw.tsv workloads `h3` and `tls-h2`
#                   h3-idle: a fresh server per run and round (h3-bare, h3-crate), counting its
#                       heap; one warm-up connection; RSS and live heap; IDLE_CONNS connections
#                       (50 being opened at a time) each doing one GET / then idle; 1 s; RSS and
#                       heap again (raw.tsv workload `idle-h3`)
#   FIRST_ROUND=1   the number of the first round (to rerun disturbed rounds into another OUT
#                   and merge: cat both raw.tsv, without the disturbed lines, then report.py)
#   WAIT_QUIET=0    if set, before each round wait (at most this many seconds) for 2 s in which
#                   the whole machine is busy less than 5 % (another job, e.g. a compile, would
#                   otherwise share the cores); the "other CPU %" of each run still tells
#   H3_CONNS=16 H3_STREAMS=32  bench-h3load's connections and streams per connection
#   BENCH_RUNTIME   multi: the servers run on tokio's multi-thread runtime (one worker when
#                   pinned to one core) instead of current_thread
#   SERVER_CPUS=0   the cores the servers run on (taskset -c)
#   LOAD_CPUS=1     the cores the load generator runs on
#   BASE_PORT=18280 the servers listen on 127.0.0.1:BASE_PORT+1..+5 (UDP for h3, TCP for TLS)
#   OUT             where logs, raw.tsv and results.md go (default: a new /tmp/hrc-h3.XXXX)
#   CARGO_TARGET_DIR  where the release build goes (default: benches/target)
#   SKIP_BUILD=1    use the binaries already built in CARGO_TARGET_DIR
#
# Everything runs on 127.0.0.1. Every run is bounded (bench-h3load's SECS and h2load -D, with
# `timeout` around each), and every server and client this script starts is killed on exit.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
IDLE_CONNS=${IDLE_CONNS:-500}
IDLE_ROUNDS=${IDLE_ROUNDS:-3}
FIRST_ROUND=${FIRST_ROUND:-1}
WAIT_QUIET=${WAIT_QUIET:-0}
WORKLOADS=${WORKLOADS:-h3 h3-idle}
H3_CONNS=${H3_CONNS:-16}
H3_STREAMS=${H3_STREAMS:-32}
BASE_PORT=${BASE_PORT:-18280}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/target}
OUT=${OUT:-$(mktemp -d /tmp/hrc-h3.XXXX)}
mkdir -p "$OUT/logs"
RAW=$OUT/raw.tsv
: >"$RAW"
BIN=$CARGO_TARGET_DIR/release
export BENCH_RUNTIME=${BENCH_RUNTIME:-}
SERVER_CPUS=${SERVER_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
H3_SERVERS=(h3-bare h3-crate)
TLS_SERVERS=(bare-tls crate-tls)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- cleanup: kill every process this script started --------------------------------------
declare -A PID=()
EXTRA_PIDS=()
cleanup() {
    local p i alive
    for p in "${PID[@]}" "${EXTRA_PIDS[@]}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null
    done
    for i in $(seq 20); do
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

# --- tools and build -----------------------------------------------------------------------
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    { $SUDO apt-get install -y "${need[@]}" || { $SUDO apt-get update && $SUDO apt-get install -y "${need[@]}"; }; } \
        >"$OUT/logs/apt.log" 2>&1 || die "apt-get install ${need[*]} failed (see $OUT/logs/apt.log)"
fi
tree_commit() { # the crate's commit, and whether src/ or Cargo.toml differ from it
    local commit
    commit=$(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null) || return 0
    git -C "$HERE/.." diff --quiet HEAD -- src Cargo.toml 2>/dev/null || commit="$commit + uncommitted changes in src/ or Cargo.toml"
    echo "$commit"
}
BUILT_FROM=
if [ -z "${SKIP_BUILD:-}" ]; then
    BUILT_FROM=$(tree_commit)
    log "building bench-h3 and bench-h3load (release, --features http3, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    # Only these two binaries: --features http3 on bench-server would make it another build.
    cargo build --release --manifest-path "$HERE/Cargo.toml" --features http3 --bin bench-h3 --bin bench-h3load \
        >"$OUT/logs/build.log" 2>&1 || { tail -30 "$OUT/logs/build.log"; die "cargo build failed"; }
fi
[ -x "$BIN/bench-h3" ] && [ -x "$BIN/bench-h3load" ] || die "no bench-h3 or bench-h3load in $BIN"

# --- servers -----------------------------------------------------------------------------
port_of() {
    case $1 in
        h3-bare) echo $((BASE_PORT + 1)) ;; h3-crate) echo $((BASE_PORT + 2)) ;;
        bare-tls) echo $((BASE_PORT + 3)) ;; crate-tls) echo $((BASE_PORT + 4)) ;;
    esac
}

# start_server MODE PORT LOGFILE: starts bench-h3 MODE on the server cores and waits (at most
# 10 s) for its "listening on" line (UDP has no connect to probe); prints the pid.
start_server() {
    local mode=$1 port=$2 logf=$3 pid i
    taskset -c "$SERVER_CPUS" "$BIN/bench-h3" "$mode" "$port" >"$logf" 2>&1 &
    pid=$!
    for i in $(seq 100); do
        grep -q '^listening on' "$logf" 2>/dev/null && { echo "$pid"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null
    log "$mode did not start on port $port: $(tail -3 "$logf")"
    return 1
}

ensure_server() {
    local name=$1 pid=${PID[$1]:-}
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 0; fi
    [ -n "$pid" ] && log "WARNING: server $name (pid $pid) died; restarting it (see $OUT/logs/server.$name.log)"
    pid=$(start_server "$name" "$(port_of "$name")" "$OUT/logs/server.$name.log") || die "cannot start $name"
    PID[$name]=$pid
}

cpu_ticks() {
    local f
    read -r -a f <"/proc/$1/stat" || { echo 0; return; }
    echo $((f[13] + f[14]))
}
sys_busy() {
    local c u n s idle io irq sirq st rest
    read -r c u n s idle io irq sirq st rest </proc/stat
    echo $((u + n + s + irq + sirq + st))
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }

# run_load WORKLOAD SERVER ROUND COMMAND...: as run.sh's: the load generator on LOAD_CPUS, one
# line in raw.tsv: workload server round log server_ticks loadgen_ticks other_ticks wall exit.
run_load() {
    local wl=$1 srv=$2 round=$3
    shift 3
    ensure_server "$srv"
    local pid=${PID[$srv]} logf="$OUT/logs/$wl.$srv.$round.log"
    local s0 b0 t0 s1 b1 t1 lg rc
    s0=$(cpu_ticks "$pid"); b0=$(sys_busy); t0=$(now)
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

h3load() { # SERVER SECS [CONNS STREAMS]
    echo "$BIN/bench-h3load" load "127.0.0.1:$(port_of "$1")" "${3:-$H3_CONNS}" "${4:-$H3_STREAMS}" "$2"
}

# live_heap PID LOG: as run.sh's (the counting allocator prints live bytes at SIGUSR1).
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

# idle_run SERVER ROUND: raw.tsv line
# idle-h3 server round log rss_before rss_after count heap_growth_bytes exit.
idle_run() {
    local srv=$1 round=$2 port=$((BASE_PORT + 5)) spid cpid i rc=0
    local before after heap0 heap1 heap slog logf="$OUT/logs/idle-h3.$srv.$round.log"
    slog="$OUT/logs/idle-server.$srv.$round.log"
    spid=$(BENCH_COUNT_ALLOC=1 start_server "$srv" "$port" "$slog") || die "cannot start $srv for idle"
    EXTRA_PIDS+=("$spid")
    timeout 30 taskset -c "$LOAD_CPUS" "$BIN/bench-h3load" idle "127.0.0.1:$port" 1 0 >"$logf" 2>&1 || rc=1
    sleep 0.5
    before=$(rss_kib "$spid")
    heap0=$(live_heap "$spid" "$slog")
    taskset -c "$LOAD_CPUS" "$BIN/bench-h3load" idle "127.0.0.1:$port" "$IDLE_CONNS" 10 >>"$logf" 2>&1 &
    cpid=$!
    EXTRA_PIDS+=("$cpid")
    for i in $(seq 600); do # at most 60 s
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
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' idle-h3 "$srv" "$round" "$logf" "${before:-0}" "${after:-0}" \
        "$IDLE_CONNS" "$heap" "$rc" >>"$RAW"
    [ "$rc" = 0 ] || log "WARNING: idle-h3 $srv round $round failed (see $logf)"
    sleep 0.3
}

wait_quiet() { # at most WAIT_QUIET s for 2 s of a machine busy < 5 % (of all its cores)
    local deadline=$((SECONDS + WAIT_QUIET)) b0 b1 tck ncpu
    tck=$(getconf CLK_TCK); ncpu=$(nproc)
    while [ "$SECONDS" -lt "$deadline" ]; do
        b0=$(sys_busy); sleep 2; b1=$(sys_busy)
        [ $(((b1 - b0) * 100)) -lt $((5 * 2 * tck * ncpu)) ] && return 0
    done
    log "WARNING: the machine was not quiet within $WAIT_QUIET s; running anyway"
}

workload() { # WORKLOAD ROUND
    local wl=$1 round=$2 srv
    case $wl in
        h3)
            for srv in "${H3_SERVERS[@]}"; do
                # shellcheck disable=SC2046 # h3load prints a command line of plain words
                run_load h3 "$srv" "$round" $(h3load "$srv" "$DURATION")
            done
            for srv in "${TLS_SERVERS[@]}"; do
                run_load tls-h2 "$srv" "$round" h2load -t1 -c16 -m32 -D "$DURATION" "https://127.0.0.1:$(port_of "$srv")/"
            done ;;
        h3-idle)
            for srv in "${H3_SERVERS[@]}"; do
                idle_run "$srv" "$round"
            done ;;
        *) die "unknown workload $wl" ;;
    esac
}

# --- run ---------------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel: $(uname -sr)"
    echo "rounds: $ROUNDS, duration: ${DURATION}s, idle connections: $IDLE_CONNS, idle rounds: $IDLE_ROUNDS"
    echo "bench-h3load: $H3_CONNS connections x $H3_STREAMS streams"
    echo "h2load: $(h2load --version 2>&1 | head -1)"
    echo "rustc: $(rustc --version 2>/dev/null)"
    echo "runtime: ${BENCH_RUNTIME:-current_thread}; server cores: $SERVER_CPUS; load generator cores: $LOAD_CPUS"
    # With SKIP_BUILD the binaries may be older than the tree: say when they were built.
    if [ -n "$BUILT_FROM" ]; then
        echo "crate: $BUILT_FROM (built by this run)"
    else
        echo "crate: tree at $(tree_commit) now; bench-h3 built $(date -u -r "$BIN/bench-h3" '+%Y-%m-%d %H:%M:%S UTC') (SKIP_BUILD)"
    fi
    echo "loadavg at start: $(cat /proc/loadavg)"
} >"$OUT/meta.txt"
cat "$OUT/meta.txt" >&2
log "results in $OUT"

case " $WORKLOADS " in
    *" h3 "*)
        for srv in "${H3_SERVERS[@]}" "${TLS_SERVERS[@]}"; do
            ensure_server "$srv"
        done
        # Warm-up: one second of load on each (results discarded).
        for srv in "${H3_SERVERS[@]}"; do
            # shellcheck disable=SC2046
            timeout 40 taskset -c "$LOAD_CPUS" $(h3load "$srv" 1 4 8) >/dev/null 2>&1
        done
        for srv in "${TLS_SERVERS[@]}"; do
            timeout 10 taskset -c "$LOAD_CPUS" h2load -t1 -c4 -m8 -n 2000 "https://127.0.0.1:$(port_of "$srv")/" >/dev/null 2>&1
        done ;;
esac

for wl in $WORKLOADS; do
    rounds=$ROUNDS
    [ "$wl" = h3-idle ] && rounds=$IDLE_ROUNDS
    for round in $(seq "$FIRST_ROUND" $((FIRST_ROUND + rounds - 1))); do
        [ "$WAIT_QUIET" -gt 0 ] && wait_quiet
        log "$wl: round $round"
        workload "$wl" "$round"
    done
done
echo "loadavg at end: $(cat /proc/loadavg)" >>"$OUT/meta.txt"

python3 "$HERE/report.py" "$OUT" | tee "$OUT/results.md"
log "raw results: $RAW; table: $OUT/results.md"
