#!/usr/bin/env bash
# Where the cost is: allocations, bytes allocated and instructions per request, and bytes kept
# per idle connection, for each server of bench-server (issue 14).
#
#   bash benches/profile.sh                 # bare crate axum actix
#   SERVERS="bare crate" N=20000 bash benches/profile.sh
#
# - allocations/request, bytes/request: the server runs with BENCH_COUNT_ALLOC=1 (a counting
#   global allocator; `kill -USR1` prints its totals); after a warm-up of N/10 requests, the
#   totals before and after N requests (h2load, 8 connections; h2c with 32 streams each).
# - bytes kept per idle connection: live bytes before and after 1 000 idle connections
#   (bench-idle: one request each, then held), divided by 1 000; heap only (RSS is in run.sh).
# - instructions/request: valgrind --tool=callgrind on the server, the totals after N and after
#   2N requests (two runs); the difference divided by N, so start-up does not count.
#   Instructions, not time: repeatable whatever else the machine does.
#
# Environment: BIN (default /work/bench-target/release), SERVERS, N (default 20000),
# RUNTIME (multi, the default, or current), BIN_BEFORE (adds crate-before: instructions only,
# since an older build may not count allocations). Server on core 0, load on core 1, loopback.
set -uo pipefail

BIN=${BIN:-/work/bench-target/release}
SERVERS=${SERVERS:-bare crate axum actix}
N=${N:-20000}
RUNTIME=${RUNTIME:-multi}
BIN_BEFORE=${BIN_BEFORE:-}
PORT=${PORT:-19300}
OUT=$(mktemp -d /tmp/hrc-profile.XXXX)
export BENCH_RUNTIME=$RUNTIME

command -v h2load >/dev/null || { echo "needs h2load (Debian: nghttp2-client)"; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind"; exit 1; }
ulimit -n "$(ulimit -Hn)"

# actix-web is a binary of its own (benches/Cargo.toml says why).
server_bin() { if [ "$2" = actix ]; then echo "$1/bench-actix"; else echo "$1/bench-server"; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 600); do port_open "$1" && return 0; sleep 0.1; done; return 1; }
next_port() { PORT=$((PORT + 1)); }

load() { # PROTO PORT COUNT
    if [ "$1" = h1 ]; then
        timeout 300 taskset -c 1 h2load --h1 -n "$3" -c 8 "http://127.0.0.1:$2/" >/dev/null 2>&1
    else
        timeout 300 taskset -c 1 h2load -n "$3" -c 8 -m 32 "http://127.0.0.1:$2/" >/dev/null 2>&1
    fi
}

# counters FILE: the last `alloc` line's allocs, bytes, live
counters() { grep '^alloc ' "$1" | tail -1 | sed 's/alloc allocs=\([0-9]*\) bytes=\([0-9]*\) live=\(-*[0-9]*\)/\1 \2 \3/'; }
snapshot() { # PID LOG: asks for the counters, waits for the new line
    local before
    before=$(grep -c '^alloc ' "$2")
    kill -USR1 "$1"
    for _ in $(seq 100); do [ "$(grep -c '^alloc ' "$2")" -gt "$before" ] && break; sleep 0.05; done
    counters "$2"
}

allocs() { # MODE PROTO -> "allocs/req bytes/req"
    local mode=$1 proto=$2 log pid a b
    next_port
    log=$OUT/alloc.$mode.$proto.log
    BENCH_COUNT_ALLOC=1 taskset -c 0 "$(server_bin "$BIN" "$mode")" "$mode" "$PORT" >"$log" 2>&1 &
    pid=$!
    wait_port "$PORT" || { echo "- -"; kill "$pid"; return; }
    load "$proto" "$PORT" $((N / 10))
    read -r -a a <<<"$(snapshot "$pid" "$log")"
    load "$proto" "$PORT" "$N"
    read -r -a b <<<"$(snapshot "$pid" "$log")"
    kill "$pid"; wait "$pid" 2>/dev/null
    awk -v n="$N" -v a0="${a[0]}" -v a1="${a[1]}" -v b0="${b[0]}" -v b1="${b[1]}" \
        'BEGIN { printf "%.1f %.0f", (b0 - a0) / n, (b1 - a1) / n }'
}

retained() { # MODE PROTO -> bytes kept per idle connection
    local mode=$1 proto=$2 log pid cpid a b clog
    next_port
    log=$OUT/idle.$mode.$proto.log
    clog=$OUT/idle-client.$mode.$proto.log
    BENCH_COUNT_ALLOC=1 BENCH_IDLE_TIMEOUT_SECS=600 taskset -c 0 "$(server_bin "$BIN" "$mode")" "$mode" "$PORT" >"$log" 2>&1 &
    pid=$!
    wait_port "$PORT" || { echo "-"; kill "$pid"; return; }
    load h1 "$PORT" 100
    read -r -a a <<<"$(snapshot "$pid" "$log")"
    taskset -c 1 "$BIN/bench-idle" "$proto" "127.0.0.1:$PORT" 1000 30 >"$clog" 2>&1 &
    cpid=$!
    for _ in $(seq 300); do grep -q '^ready' "$clog" && break; sleep 0.1; done
    sleep 1
    read -r -a b <<<"$(snapshot "$pid" "$log")"
    kill "$cpid" "$pid"; wait "$cpid" "$pid" 2>/dev/null
    awk -v a="${a[2]}" -v b="${b[2]}" 'BEGIN { printf "%.0f", (b - a) / 1000 }'
}

instructions() { # BIN MODE PROTO -> instructions/request
    local bin=$1 mode=$2 proto=$3 count pid f total=() 
    for count in "$N" $((2 * N)); do
        next_port
        f=$OUT/cg.$mode.$proto.$count
        taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$f" "$(server_bin "$bin" "$mode")" "$mode" "$PORT" >"$f.log" 2>&1 &
        pid=$!
        wait_port "$PORT" || { echo "-"; kill "$pid"; return; }
        load "$proto" "$PORT" "$count"
        callgrind_control -d "$pid" >/dev/null 2>&1
        for _ in $(seq 100); do [ -s "$f.1" ] && break; sleep 0.1; done
        sleep 0.5
        kill "$pid"; wait "$pid" 2>/dev/null
        total+=("$(callgrind_annotate "$f.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')")
    done
    awk -v a="${total[0]}" -v b="${total[1]}" -v n="$N" 'BEGIN { printf "%.0f", (b - a) / n }'
}

echo "runtime: $RUNTIME; N = $N requests per measurement; results in $OUT"
echo
echo "| server | allocs/req h1 | bytes/req h1 | allocs/req h2c | bytes/req h2c | instructions/req h1 | instructions/req h2c | heap bytes kept per idle conn h1 / h2c |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for mode in $SERVERS; do
    read -r a1 b1 <<<"$(allocs "$mode" h1)"
    read -r a2 b2 <<<"$(allocs "$mode" h2)"
    i1=$(instructions "$BIN" "$mode" h1)
    i2=$(instructions "$BIN" "$mode" h2)
    r1=$(retained "$mode" h1)
    r2=$(retained "$mode" h2)
    echo "| $mode | $a1 | $b1 | $a2 | $b2 | $i1 | $i2 | $r1 / $r2 |"
done
if [ -n "$BIN_BEFORE" ]; then
    i1=$(instructions "$BIN_BEFORE" crate h1)
    i2=$(instructions "$BIN_BEFORE" crate h2)
    echo "| crate-before | | | | | $i1 | $i2 | |"
fi
