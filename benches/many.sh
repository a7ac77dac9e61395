#!/usr/bin/env bash
# Many idle connections (issue 14): TOTAL idle HTTP/1.1 connections (each made one request)
# spread over SERVERS crate server processes sharing one port with SO_REUSEPORT, opened by
# CLIENTS bench-idle processes, each from its own source address in 127.0.1.0/24 (one address
# has ~28 000 ephemeral ports). One process may hold at most `ulimit -Hn` descriptors here
# (20 000), hence several of each.
#
#   bash benches/many.sh                               # 100 000 over 7 servers, 6 clients
#   TOTAL=19800 SERVERS=1 CLIENTS=2 bash benches/many.sh   # one server process at its limit
#
# Reports: connections held, accept rate while they arrive, server RSS per connection (the
# servers' RSS after minus before, over TOTAL), idle CPU and wake-ups of the servers over
# IDLE_SECS, the time each server takes to list its registry (SIGUSR2, `handle.clients()`), and
# the time from SIGTERM (graceful shutdown) until every server has exited.
#
# Environment: BIN (default /work/bench-target/release), TOTAL, SERVERS, CLIENTS, IDLE_SECS (30),
# RUNTIME (multi). Servers on core 0, clients on core 1, loopback only; every process this
# script starts is gone when it ends.
set -uo pipefail

BIN=${BIN:-/work/bench-target/release}
TOTAL=${TOTAL:-100000}
SERVERS=${SERVERS:-7}
CLIENTS=${CLIENTS:-6}
IDLE_SECS=${IDLE_SECS:-30}
PORT=${PORT:-19090}
OUT=$(mktemp -d /tmp/hrc-many.XXXX)
export BENCH_RUNTIME=${RUNTIME:-multi}

ulimit -n "$(ulimit -Hn)"
echo "descriptor limit per process: $(ulimit -n) (soft raised to the hard limit)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
wakeups() {
    local t=0 n f
    for f in /proc/"$1"/task/*/status; do
        n=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$f" 2>/dev/null)
        t=$((t + ${n:-0}))
    done
    echo "$t"
}
sum() { local s=0 x; for x in "$@"; do s=$((s + x)); done; echo "$s"; }

servers=()
for i in $(seq "$SERVERS"); do
    BENCH_REUSEPORT=1 BENCH_REPORT=1 BENCH_IDLE_TIMEOUT_SECS=3600 BENCH_CONNECTION_LIMIT=100000 \
        taskset -c 0 "$BIN/bench-server" crate "$PORT" >"$OUT/server.$i.log" 2>&1 &
    servers+=($!)
    PIDS+=($!)
done
for i in $(seq "$SERVERS"); do
    for _ in $(seq 100); do grep -q listening "$OUT/server.$i.log" && break; sleep 0.1; done
done
sleep 0.5
rss0=$(sum $(for p in "${servers[@]}"; do rss_kib "$p"; done))

per_client=$((TOTAL / CLIENTS))
hold=$((IDLE_SECS + 200))
start=$(date +%s.%N)
clients=()
for i in $(seq "$CLIENTS"); do
    taskset -c 1 "$BIN/bench-idle" h1 "127.0.0.1:$PORT" "$per_client" "$hold" "127.0.1.$i" >"$OUT/client.$i.log" 2>&1 &
    clients+=($!)
    PIDS+=($!)
done
for i in $(seq "$CLIENTS"); do
    for _ in $(seq 1500); do
        grep -q '^ready' "$OUT/client.$i.log" && break
        kill -0 "${clients[$((i - 1))]}" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '^ready' "$OUT/client.$i.log" || { echo "client $i failed: $(cat "$OUT/client.$i.log")"; exit 1; }
done
ready=$(date +%s.%N)
held=$((per_client * CLIENTS))
sleep 2
rss1=$(sum $(for p in "${servers[@]}"; do rss_kib "$p"; done))
echo "connections held: $held over $SERVERS server process(es), from $CLIENTS client process(es)"
awk -v n="$held" -v a="$start" -v b="$ready" 'BEGIN { printf "set-up: %.1f s, %.0f connections/s accepted (and served one request each)\n", b - a, n / (b - a) }'
awk -v n="$held" -v a="$rss0" -v b="$rss1" 'BEGIN { printf "server RSS: %.0f MiB before, %.0f MiB after: %.2f KiB per connection\n", a / 1024, b / 1024, (b - a) / n }'

c0=$(sum $(for p in "${servers[@]}"; do ticks "$p"; done))
w0=$(sum $(for p in "${servers[@]}"; do wakeups "$p"; done))
sleep "$IDLE_SECS"
c1=$(sum $(for p in "${servers[@]}"; do ticks "$p"; done))
w1=$(sum $(for p in "${servers[@]}"; do wakeups "$p"; done))
awk -v c=$((c1 - c0)) -v w=$((w1 - w0)) -v s="$IDLE_SECS" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "idle over %d s: servers CPU %.3f %% of a core, %.1f wake-ups/s in all\n", s, 100 * c / hz / s, w / s }'

for i in $(seq "$SERVERS"); do kill -USR2 "${servers[$((i - 1))]}"; done
sleep 1
for i in $(seq "$SERVERS"); do
    line=$(grep '^clients=' "$OUT/server.$i.log" | tail -1)
    echo "server $i registry: $line"
done

t0=$(date +%s.%N)
for p in "${servers[@]}"; do kill -TERM "$p"; done
for p in "${servers[@]}"; do wait "$p" 2>/dev/null; done
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v n="$held" 'BEGIN { printf "graceful shutdown of %d idle connections: %.2f s until every server exited\n", n, b - a }'
for p in "${clients[@]}"; do kill "$p" 2>/dev/null; done
