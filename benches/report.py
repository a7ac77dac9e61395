#!/usr/bin/env python3
"""Turns the raw results of benches/run.sh (OUT/raw.tsv and the load generators' logs) into the
markdown tables of BENCHMARKS.md.  Usage: python3 benches/report.py OUT_DIR

raw.tsv, one line per run, tab separated:
  load runs:  workload server round log server_ticks loadgen_ticks other_ticks wall_s exit
  idle runs:  idle-h1[-ARRIVAL]|idle-h2|idle-h3 server round log rss_before_kib rss_after_kib count heap_growth_bytes|- exit
  sync-light: the light client beside the sync workload (its log: h2load's time for request)
HTTP/3 (benches/h3.sh): workload h3 (servers h3-bare, h3-crate; bench-h3load's log) and idle-h3.
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
    ("h3", "HTTP/3, `bench-h3load load 127.0.0.1:PORT 16 32 $DURATION` (quinn + h3 client: 16 connections x 32 streams)", "req/s", "req"),
    ("sync", "one h2c connection, 64 streams of a 100 µs synchronous handler, `h2load -t1 -c1 -m64 -D $DURATION /spin`, servers with 2 workers on cores 0,1 (shared with the load generators)", "req/s", "req"),
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


def parse_h3load(text):
    m = re.search(r"bench-h3load: (\d+) requests ok, (\d+) errors in ([\d.]+) s", text)
    if not m:
        return None
    return int(m.group(1)), float(m.group(3)), int(m.group(2))


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


def parse_latency_mean_us(text):
    m = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]


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
    heap = defaultdict(dict)  # idle-... -> (server, round) -> heap bytes kept per connection
    light = defaultdict(dict)  # sync-light: server -> round -> mean latency (µs)
    failures = []
    for row in rows:
        wl, srv, rnd, logf = row[0], row[1], int(row[2]), row[3]
        if wl.startswith("idle-"):
            before, after, count, rc = int(row[4]), int(row[5]), int(row[6]), row[8]
            if rc != "0":
                failures.append(f"{wl} {srv} round {rnd}: failed (exit {rc}), see {logf}")
                continue
            idle[wl][(srv, rnd)] = (before, after, count)
            if len(row) > 7 and row[7] not in ("-", ""):
                heap[wl][(srv, rnd)] = int(row[7]) / count
            continue
        if wl == "sync-light":
            text = open(logf, errors="replace").read() if os.path.exists(logf) else ""
            mean = parse_latency_mean_us(text)
            if mean is not None:
                light[srv][rnd] = mean
            continue
        server_ticks, loadgen_ticks, other_ticks, wall, rc = int(row[4]), int(row[5]), int(row[6]), float(row[7]), row[8]
        text = open(logf, errors="replace").read() if os.path.exists(logf) else ""
        if "bench-h3load:" in text:
            parsed = parse_h3load(text)
        elif "h2load" in text or "finished in" in text:
            parsed = parse_h2load(text)
        else:
            parsed = parse_wrk(text)
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
        base = "bare-tls" if wl.startswith("tls") else "h3-bare" if wl == "h3" else "bare"
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
        if wl == "sync" and light:
            print("Light client beside it (`h2load -t1 -c1 -m1 -D $DURATION /`), mean latency per request:")
            print()
            print("| server | mean latency µs (median) [min–max] |")
            print("|---|---:|")
            for srv in servers:
                vals = list(light.get(srv, {}).values())
                if vals:
                    print(f"| {srv} | {statistics.median(vals):,.0f} [{min(vals):,.0f}–{max(vals):,.0f}] |")
            print()

    if "h3" in runs and "tls-h2" in runs:
        h3, h2 = runs["h3"], runs["tls-h2"]
        print("### HTTP/3 against HTTP/2 over TLS, same server, same handler, same rounds")
        print()
        print("| HTTP/3 server | HTTP/2 server | req/s HTTP/3 ÷ HTTP/2 [min–max] | CPU µs/req HTTP/3 ÷ HTTP/2 [min–max] |")
        print("|---|---|---:|---:|")
        for a, b in (("h3-crate", "crate-tls"), ("h3-bare", "bare-tls")):
            rounds = sorted(r for s, r in h3 if s == a and (b, r) in h2)
            if not rounds:
                continue
            rate = [h3[(a, r)]["rate"] / h2[(b, r)]["rate"] for r in rounds]
            cpu = [h3[(a, r)]["cpu_us"] / h2[(b, r)]["cpu_us"] for r in rounds if h2[(b, r)]["cpu_us"] > 0]
            print(f"| {a} | {b} | {fmt_ratio(rate)} | {fmt_ratio(cpu)} |")
        print()

    if "idle-h3" in idle:
        res, hp = idle["idle-h3"], heap.get("idle-h3", {})
        servers = []
        for srv, _ in sorted(res, key=lambda k: k[1]):
            if srv not in servers:
                servers.append(srv)
        rounds = sorted({r for _, r in res})
        count = next(iter(res.values()))[2]
        print(f"### idle memory, HTTP/3: growth per idle QUIC connection ({count} connections, one GET / each), fresh server per run")
        print()
        print("| server | RSS before (MiB) | RSS KiB/conn [min–max] | − h3-bare (KiB) | heap B/conn [min–max] | − h3-bare (B) |")
        print("|---|---:|---:|---:|---:|---:|")
        rss = {s: {r: (res[(s, r)][1] - res[(s, r)][0]) / res[(s, r)][2] for r in rounds if (s, r) in res} for s in servers}
        hb = {s: {r: hp[(s, r)] for r in rounds if (s, r) in hp} for s in servers}
        for srv in servers:
            befores = [res[(srv, r)][0] for r in rounds if (srv, r) in res]
            cells = [srv, f"{statistics.median(befores) / 1024:.1f}"]
            for d, unit in ((rss, ".1f"), (hb, ",.0f")):
                vals = list(d[srv].values())
                cells.append(f"{statistics.median(vals):{unit}} [{min(vals):{unit}}–{max(vals):{unit}}]" if vals else "–")
                diffs = [d[srv][r] - d["h3-bare"][r] for r in d[srv] if r in d.get("h3-bare", {})]
                cells.append(f"{statistics.median(diffs):+{unit}}" if diffs and srv != "h3-bare" else "–")
            print("| " + " | ".join(cells) + " |")
        print()

    if "idle-h1" in idle or "idle-h2" in idle:
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

    arrivals = [wl for wl in ("idle-h1", "idle-h1-serial", "idle-h1-batched", "idle-h1-connect", "idle-h2") if wl in idle]
    if len(arrivals) > 0:
        print("### idle memory by arrival: growth per idle connection, heap bytes (RSS KiB), fresh server per run")
        print()
        servers = []
        for wl in arrivals:
            for srv, _ in sorted(idle[wl], key=lambda k: k[1]):
                if srv not in servers:
                    servers.append(srv)
        print("| arrival | " + " | ".join(f"{s} heap B [RSS KiB]" for s in servers) + " | " + " | ".join(f"{s} − bare heap B [RSS KiB]" for s in servers if s != "bare") + " |")
        print("|---|" + "---:|" * (2 * len(servers) - (1 if "bare" in servers else 0)))
        for wl in arrivals:
            res, hp = idle[wl], heap.get(wl, {})
            rounds = sorted({r for _, r in res})
            def med(srv, d):
                vals = [d[r] for r in rounds if r in d]
                return statistics.median(vals) if vals else None
            rss = {srv: {r: (res[(srv, r)][1] - res[(srv, r)][0]) / res[(srv, r)][2] for r in rounds if (srv, r) in res} for srv in servers}
            hb = {srv: {r: hp[(srv, r)] for r in rounds if (srv, r) in hp} for srv in servers}
            cells = [wl.replace("idle-h1-", "HTTP/1.1 ").replace("idle-h1", "HTTP/1.1 concurrent").replace("idle-h2", "h2c concurrent")]
            for srv in servers:
                h, r = med(srv, hb[srv]), med(srv, rss[srv])
                cells.append(f"{h:,.0f} [{r:.1f}]" if h is not None and r is not None else "–")
            for srv in servers:
                if srv == "bare":
                    continue
                dh = [hb[srv][r] - hb["bare"][r] for r in rounds if r in hb[srv] and r in hb.get("bare", {})]
                dr = [rss[srv][r] - rss["bare"][r] for r in rounds if r in rss[srv] and r in rss.get("bare", {})]
                cells.append(f"{statistics.median(dh):+,.0f} [{statistics.median(dr):+.1f}]" if dh and dr else "–")
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
