#!/usr/bin/env python3
"""Turns the raw results of benches/run.sh (OUT/raw.tsv and the load generators' logs) into the
markdown tables of BENCHMARKS.md.  Usage: python3 benches/report.py OUT_DIR

raw.tsv, one line per run, tab separated:
  load runs:  workload server round log server_ticks loadgen_ticks other_ticks wall_s exit
  idle runs:  idle-h1|idle-h2 server round log rss_before_kib rss_after_kib count - exit
"""

import os
import re
import statistics
import sys
from collections import defaultdict

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

WORKLOADS = [
    ("h2c", "h2c, `h2load -t1 -c16 -m32 -D $DURATION http://`", "req/s", "req"),
    ("pipelined", "pipelined HTTP/1.1, `wrk -t1 -c64 -d$DURATION -s pipeline.lua -- 16`", "req/s", "req"),
    ("keepalive", "keep-alive HTTP/1.1, `wrk -t1 -c64 -d$DURATION`", "req/s", "req"),
    ("churn", "connection churn, `wrk -t1 -c64 -d$DURATION -H 'Connection: close'` (one connection per request)", "conn/s", "conn"),
    ("tls-h2", "TLS h2, `h2load -t1 -c16 -m32 -D $DURATION https://`", "req/s", "req"),
    ("tls-handshake", "TLS handshakes, `h2load -t1 -c16 -n $HS_N --h1 -H 'Connection: close' https://` (one handshake per request)", "handshakes/s", "handshake"),
]


def parse_h2load(text):
    m = re.search(r"finished in ([\d.]+)(ms|s),", text)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    c = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (m and r and c):
        return None
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    ok = int(c.group(1))
    errors = int(r.group(5)) + int(r.group(6)) + int(r.group(7)) + sum(int(c.group(i)) for i in (2, 3, 4))
    return ok, secs, errors


def parse_wrk(text):
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", text)
    if not m:
        return None
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(3)]
    secs = float(m.group(2)) * unit
    total = int(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    sock = sum(int(x) for x in sock.groups()) if sock else 0
    return total - non2xx, secs, non2xx + sock


def fmt_ratio(values):
    if not values:
        return "–"
    return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"


def fmt_num(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def main(out):
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(out, "raw.tsv")) if line.strip()]
    runs = defaultdict(dict)  # workload -> (server, round) -> result
    idle = defaultdict(dict)  # idle-h1/idle-h2 -> (server, round) -> (before, after, count, ok)
    failures = []
    for row in rows:
        wl, srv, rnd, logf = row[0], row[1], int(row[2]), row[3]
        if wl.startswith("idle-"):
            before, after, count, rc = int(row[4]), int(row[5]), int(row[6]), row[8]
            if rc != "0":
                failures.append(f"{wl} {srv} round {rnd}: failed (exit {rc}), see {logf}")
                continue
            idle[wl][(srv, rnd)] = (before, after, count)
            continue
        server_ticks, loadgen_ticks, other_ticks, wall, rc = int(row[4]), int(row[5]), int(row[6]), float(row[7]), row[8]
        text = open(logf, errors="replace").read() if os.path.exists(logf) else ""
        parsed = parse_h2load(text) if "h2load" in text or "finished in" in text else parse_wrk(text)
        if parsed is None or rc != "0":
            failures.append(f"{wl} {srv} round {rnd}: no result (exit {rc}), see {logf}")
            continue
        ok, secs, errors = parsed
        if errors:
            failures.append(f"{wl} {srv} round {rnd}: {errors} failed requests or socket errors, see {logf}")
        if ok == 0:
            failures.append(f"{wl} {srv} round {rnd}: no successful request, see {logf}")
            continue
        runs[wl][(srv, rnd)] = {
            "rate": ok / secs,
            "cpu_us": server_ticks * 1e6 / CLK_TCK / ok,
            "server_pct": 100.0 * server_ticks / CLK_TCK / wall,
            "other_pct": max(0.0, 100.0 * other_ticks / CLK_TCK / wall / NCPU),
            "errors": errors,
        }

    meta = os.path.join(out, "meta.txt")
    if os.path.exists(meta):
        print("```")
        print(open(meta).read().rstrip())
        print("```")
        print()

    for wl, title, unit, per in WORKLOADS:
        res = runs.get(wl)
        if not res:
            continue
        servers = []
        for srv, _ in sorted(res, key=lambda k: k[1]):
            if srv not in servers:
                servers.append(srv)
        base = "bare-tls" if wl.startswith("tls") else "bare"
        rounds = sorted({r for _, r in res})
        print(f"### {title}")
        print()
        print(f"| server | {unit} (median) | vs {base} [min–max] | server CPU µs/{per} | CPU vs {base} [min–max] | server CPU % | errors | other CPU % (median / max) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for srv in servers:
            mine = [res[(srv, r)] for r in rounds if (srv, r) in res]
            rate_ratios = [res[(srv, r)]["rate"] / res[(base, r)]["rate"] for r in rounds if (srv, r) in res and (base, r) in res]
            cpu_ratios = [res[(srv, r)]["cpu_us"] / res[(base, r)]["cpu_us"] for r in rounds if (srv, r) in res and (base, r) in res and res[(base, r)]["cpu_us"] > 0]
            other = [x["other_pct"] for x in mine]
            print(
                f"| {srv} | {fmt_num(statistics.median(x['rate'] for x in mine))} "
                f"| {fmt_ratio(rate_ratios)} "
                f"| {fmt_num(statistics.median(x['cpu_us'] for x in mine), 2)} "
                f"| {fmt_ratio(cpu_ratios)} "
                f"| {fmt_num(statistics.median(x['server_pct'] for x in mine))} "
                f"| {sum(x['errors'] for x in mine)} "
                f"| {statistics.median(other):.0f} / {max(other):.0f} |"
            )
        print()

    if idle:
        print("### idle memory: RSS growth per idle connection (KiB), fresh server per run")
        print()
        servers = []
        for wl in ("idle-h1", "idle-h2"):
            for srv, _ in sorted(idle.get(wl, {}), key=lambda k: k[1]):
                if srv not in servers:
                    servers.append(srv)
        print("| server | RSS before (MiB) | HTTP/1.1 KiB/conn [min–max] | vs bare (KiB) | h2c KiB/conn [min–max] | vs bare (KiB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for srv in servers:
            cells = [srv]
            befores = []
            for wl in ("idle-h1", "idle-h2"):
                res = idle.get(wl, {})
                rounds = sorted({r for _, r in res})
                per = {r: (res[(srv, r)][1] - res[(srv, r)][0]) / res[(srv, r)][2] for r in rounds if (srv, r) in res}
                befores += [res[(srv, r)][0] for r in rounds if (srv, r) in res]
                base = {r: (res[("bare", r)][1] - res[("bare", r)][0]) / res[("bare", r)][2] for r in rounds if ("bare", r) in res}
                diffs = [per[r] - base[r] for r in per if r in base]
                vals = list(per.values())
                cells.append(f"{statistics.median(vals):.1f} [{min(vals):.1f}–{max(vals):.1f}]" if vals else "–")
                cells.append(f"{statistics.median(diffs):+.1f}" if diffs and srv != "bare" else "–")
            cells.insert(1, f"{statistics.median(befores) / 1024:.1f}" if befores else "–")
            print("| " + " | ".join(cells) + " |")
        print()

    print("### failures")
    print()
    if failures:
        for f in failures:
            print(f"- {f}")
    else:
        print("none: every run finished, every response was 2xx, no socket errors")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
