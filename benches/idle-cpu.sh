#!/usr/bin/env bash
# Idle cost: CPU and wake-ups of a server holding CONNS idle connections for SECS seconds.
#
#   bash benches/idle-cpu.sh [CONNS] [SECS]
#
# Each server (bench-server MODE, pinned to core 0, multi-thread runtime unless RUNTIME=current)
# gets CONNS connections from bench-idle (pinned to core 1), each of which made one request and
# then sits idle. Once all are open, the server's CPU time (utime + stime, /proc/PID/stat) and
# its threads' voluntary context switches (each one a sleep the thread was woken from) are read,
# and again SECS seconds later. The crate's HTTP/1 and HTTP/2 idle timeouts are IDLE_TIMEOUT
# (default 120 s, past the measurement, so no connection is closed meanwhile); a build that
# samples progress every quarter of the timeout wakes each connection every IDLE_TIMEOUT/4.
#
# Environment:
#   BIN         bench binaries of this tree    (default /work/bench-target/release)
#   BIN_BEFORE  bench binaries of another tree (optional; its `crate` is measured as "before")
#   MODES       servers of BIN to measure      (default "bare crate")
#   PROTOS      h1 and/or h2                   (default "h1 h2")
#   RUNTIME     multi (default) or current
#   IDLE_TIMEOUT  the crate's idle timeouts in seconds (default 120)
set -euo pipefail

CONNS=${1:-10000}
SECS=${2:-60}
BIN=${BIN:-/work/bench-target/release}
BIN_BEFORE=${BIN_BEFORE:-}
MODES=${MODES:-bare crate}
PROTOS=${PROTOS:-h1 h2}
RUNTIME=${RUNTIME:-multi}
PORT=${PORT:-19080} # below the ephemeral range: the clients hold 10 000 source ports
IDLE_TIMEOUT=${IDLE_TIMEOUT:-120}
HZ=$(getconf CLK_TCK)

ulimit -n "$(ulimit -Hn)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wakeups() {
    local total=0 n
    for f in /proc/"$1"/task/*/status; do
        n=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$f" 2>/dev/null || echo 0)
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

measure() { # LABEL BINDIR MODE PROTO
    local label=$1 bin=$2 mode=$3 proto=$4 spid cpid log
    log=$(mktemp)
    BENCH_RUNTIME=$RUNTIME BENCH_IDLE_TIMEOUT_SECS=$IDLE_TIMEOUT taskset -c 0 "$bin/bench-server" "$mode" "$PORT" >"$log" 2>&1 &
    spid=$!
    for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
    local clog
    clog=$(mktemp)
    taskset -c 1 "$BIN/bench-idle" "$proto" "127.0.0.1:$PORT" "$CONNS" $((SECS + 20)) >"$clog" 2>&1 &
    cpid=$!
    for _ in $(seq 600); do grep -q '^ready' "$clog" && break; sleep 0.1; done
    if ! grep -q '^ready' "$clog"; then
        echo "$label $mode $proto: the client did not get ready: $(cat "$clog")" >&2
        kill "$spid" "$cpid" 2>/dev/null || true
        return
    fi
    sleep 2 # let the set-up settle
    local c0 w0 c1 w1
    c0=$(cpu_ticks "$spid")
    w0=$(wakeups "$spid")
    sleep "$SECS"
    c1=$(cpu_ticks "$spid")
    w1=$(wakeups "$spid")
    kill "$cpid" "$spid" 2>/dev/null || true
    wait "$cpid" "$spid" 2>/dev/null || true
    awk -v l="$label" -v m="$mode" -v p="$proto" -v n="$CONNS" -v s="$SECS" -v hz="$HZ" \
        -v c=$((c1 - c0)) -v w=$((w1 - w0)) \
        'BEGIN { printf "%-7s %-6s %-3s %6d conns %3ds  CPU %6.3f %%  wake-ups %8.1f /s\n", l, m, p, n, s, 100 * c / hz / s, w / s }'
    rm -f "$log" "$clog"
    PORT=$((PORT + 1))
}

echo "runtime: $RUNTIME; $CONNS idle connections; $SECS s"
for proto in $PROTOS; do
    if [ -n "$BIN_BEFORE" ]; then
        measure before "$BIN_BEFORE" crate "$proto"
    fi
    for mode in $MODES; do
        measure after "$BIN" "$mode" "$proto"
    done
done
