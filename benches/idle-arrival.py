#!/usr/bin/env python3
"""Heap bytes kept per idle HTTP/1.1 connection, by how the connections arrive (issue 24):
serial (connect, one GET /, keep the socket, next), batched (all connected, then one request
each) and connect-only (no request). bench-server with BENCH_COUNT_ALLOC=1 (its counting
allocator; SIGUSR1 prints the live bytes), bare and crate, twice each, server pinned to core 0.

    python3 benches/idle-arrival.py [N]     # N connections per run (default 1000)

Needs benches/target/release/bench-server (cargo build --release --manifest-path
benches/Cargo.toml). Heap only (no RSS: the allocator's own overhead and the kernel's socket
buffers are not in it). Loopback only; every socket is closed and every server killed at the
end of its run.
"""
import socket, sys, time, subprocess, os, signal, re
BIN="/work/main/benches/target/release/bench-server"
N=int(sys.argv[1]) if len(sys.argv)>1 else 1000
def live(proc):
    proc.send_signal(signal.SIGUSR1)
    while True:
        line=proc.stdout.readline().decode()
        m=re.search(r'live=(\d+)',line)
        if m: return int(m.group(1))
def run(mode, pattern, port):
    env=dict(os.environ, BENCH_COUNT_ALLOC="1", BENCH_RUNTIME="multi")
    p=subprocess.Popen(["taskset","-c","0",BIN,mode,str(port)],stdout=subprocess.PIPE,env=env)
    p.stdout.readline()  # listening
    time.sleep(0.3)
    base=live(p)
    socks=[]
    req=b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    if pattern=="serial":
        for i in range(N):
            s=socket.create_connection(("127.0.0.1",port)); s.sendall(req); s.recv(4096); socks.append(s)
    elif pattern=="batched":
        for i in range(N): socks.append(socket.create_connection(("127.0.0.1",port)))
        for s in socks: s.sendall(req)
        for s in socks: s.recv(4096)
    else:
        for i in range(N): socks.append(socket.create_connection(("127.0.0.1",port)))
    time.sleep(0.5)
    after=live(p)
    for s in socks: s.close()
    p.kill(); p.wait()
    return (after-base)/N
port=19600
for pattern in ["serial","batched","connect"]:
    res={}
    for mode in ["bare","crate","bare","crate"]:
        port+=1
        res.setdefault(mode,[]).append(run(mode,pattern,port))
    print(pattern, {k:[round(x/1024,2) for x in v] for k,v in res.items()}, "diff KiB: %.2f"%((min(res['crate'])-min(res['bare']))/1024))
