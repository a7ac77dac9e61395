//! The inspector's zero-downtime operations end to end (`examples/serve.rs` as child
//! processes): two binary upgrades in a row under load, the certificate reloaded on SIGHUP,
//! systemd socket activation (`LISTEN_FDS`), and the upgrade socket refusing another user.
//!
//! The inspector is found next to the test binary (`target/<profile>/examples/serve`); `cargo
//! test --test inspector_upgrade` does not rebuild it: `cargo build --all-features --example
//! serve` first.
#![cfg(all(unix, feature = "tls", feature = "proxy-protocol", feature = "metrics"))]

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper_remote_client::tls::rustls;
use hyper_remote_client::tls::rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

mod common;

use common::inspector::{example_path, send_signal, Exited, Process};
use common::{within, LIMIT};

// ---------------------------------------------------------------------------------------------
// The inspector as a child process
// ---------------------------------------------------------------------------------------------

/// A started inspector (see [`Process`]: stopped with SIGTERM when dropped) and the addresses
/// it said it listens on.
struct Inspector {
    process: Process,
    /// The `listening on http://ADDR` addresses, in order.
    http: Vec<String>,
    /// The `listening on https://ADDR` address.
    https: String,
}

/// The inspector with `args`, its environment made predictable (default log level, no colour
/// setting from outside).
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(example_path());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID");
    cmd
}

/// Runs `cmd` and waits for its `listening on http://` line(s) and its `listening on https://`
/// line.
fn start(cmd: Command) -> Inspector {
    let mut process = Process::spawn(cmd);
    let mut http = Vec::new();
    let https = loop {
        let Some(line) = process.next_line() else {
            let exited = process.wait(LIMIT);
            panic!("the inspector exited at start: {exited:#?}");
        };
        if let Some(addr) = line.strip_prefix("listening on http://") {
            http.push(addr.trim().to_owned());
        } else if let Some(addr) = line.strip_prefix("listening on https://") {
            break addr.trim().to_owned();
        } else {
            panic!("unexpected line before `listening on https://`: {line:?}");
        }
    };
    assert!(!http.is_empty(), "no `listening on http://` line");
    Inspector {
        process,
        http,
        https,
    }
}

impl Inspector {
    /// The first HTTP address.
    fn http_addr(&self) -> SocketAddr {
        self.http[0].parse().expect("an address")
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 by hand, over TCP or TLS
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The server ends the connection after this response.
    fn closes(&self) -> bool {
        self.header("connection").is_some_and(|value| {
            value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
        })
    }

    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A `GET /` answered in full: 200, and the connection's JSON with its `id`.
    fn check_root(&self) -> Result<Value, String> {
        if self.status != 200 {
            return Err(format!(
                "status {} ({:?})",
                self.status,
                String::from_utf8_lossy(&self.body)
            ));
        }
        let json = self.json()?;
        if !json["id"].is_u64() {
            return Err(format!("no id in {json}"));
        }
        Ok(json)
    }
}

/// One HTTP/1.1 connection, requests sent one at a time.
struct Conn<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> Conn<S> {
    fn new(stream: S) -> Conn<S> {
        Conn {
            reader: BufReader::new(stream),
        }
    }

    /// `GET path`, with `Connection: close` if `close`; the whole response.
    fn get(&mut self, path: &str, close: bool) -> io::Result<Response> {
        let connection = if close { "connection: close\r\n" } else { "" };
        let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{connection}\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(request.as_bytes())?;
        stream.flush()?;
        read_response(&mut self.reader)
    }

    fn stream(&self) -> &S {
        self.reader.get_ref()
    }
}

fn read_response(reader: &mut impl BufRead) -> io::Result<Response> {
    let eof = |what: &str| io::Error::new(ErrorKind::UnexpectedEof, what.to_owned());
    let bad = |what: String| io::Error::new(ErrorKind::InvalidData, what);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(eof("the connection ended without a response"));
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad(format!("not a status line: {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(eof("the connection ended within a response head"));
        }
        let field = line.trim_end_matches(['\r', '\n']);
        if field.is_empty() {
            break;
        }
        let (key, value) = field
            .split_once(':')
            .ok_or_else(|| bad(format!("not a header field: {field:?}")))?;
        headers.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let length: usize = response
        .header("content-length")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad(format!("no Content-Length: {:?}", response.headers)))?;
    response.body = vec![0; length];
    reader
        .read_exact(&mut response.body)
        .map_err(|error| io::Error::new(error.kind(), format!("the response body: {error}")))?;
    Ok(response)
}

/// A TCP connection whose every read and write gives up after [`LIMIT`].
fn tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, LIMIT)?;
    stream.set_read_timeout(Some(LIMIT))?;
    stream.set_write_timeout(Some(LIMIT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn http(addr: SocketAddr) -> Conn<TcpStream> {
    Conn::new(tcp(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}")))
}

/// `GET /stats` on a new connection.
fn stats(addr: SocketAddr) -> Value {
    let response = http(addr)
        .get("/stats", true)
        .unwrap_or_else(|e| panic!("GET /stats from {addr}: {e}"));
    assert_eq!(response.status, 200, "{response:?}");
    response.json().unwrap()
}

fn count(json: &Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key:?} in {json}"))
}

// ---------------------------------------------------------------------------------------------
// Load: new connections all along, and keep-alive clients
// ---------------------------------------------------------------------------------------------

/// Phases of the two upgrades, for counting what was served when.
const PHASES: [&str; 5] = [
    "#1 alone",
    "#1 -> #2 upgrade",
    "#2 alone",
    "#2 -> #3 upgrade",
    "#3 alone",
];

/// However the test goes, the load stops after this.
const LOAD_AT_MOST: Duration = Duration::from_secs(120);

struct Counters {
    /// The phases' names.
    phases: &'static [&'static str],
    /// Phases in which a request on a connection opened before [`reaped`](Self::reaped) may
    /// fail: it died with a successor killed on purpose (counted as lost, not failed).
    lossy: &'static [usize],
    /// When the successor was about to be killed.
    killed: OnceLock<Instant>,
    /// When the killed successor was reaped: connections opened from then on only the old
    /// process can have accepted.
    reaped: OnceLock<Instant>,
    stop: AtomicBool,
    phase: AtomicUsize,
    served: Vec<AtomicU64>,
    /// When a request was first answered in each phase.
    first_served: Vec<OnceLock<Instant>>,
    failed: AtomicU64,
    refused: AtomicU64,
    /// Requests under way on a connection of the killed successor when it was killed.
    lost_in_flight: AtomicU64,
    /// Requests begun after the kill on a connection of the killed successor (it was idle).
    lost_idle: AtomicU64,
    /// Keep-alive connections the server ended with `Connection: close` (allowed).
    closed_by_server: AtomicU64,
    /// The first failures, described.
    failures: Mutex<Vec<String>>,
    /// Held clients begin no request while this is set.
    hold: AtomicBool,
    /// Held clients with a request under way.
    busy: AtomicUsize,
    /// Requests the held clients had answered.
    held_served: AtomicU64,
}

/// A held client's request under way (see [`Counters::enter`]).
struct Busy<'a>(&'a Counters);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Counters {
    fn new(phases: &'static [&'static str], lossy: &'static [usize]) -> Counters {
        Counters {
            phases,
            lossy,
            killed: OnceLock::new(),
            reaped: OnceLock::new(),
            stop: AtomicBool::new(false),
            phase: AtomicUsize::new(0),
            served: phases.iter().map(|_| AtomicU64::new(0)).collect(),
            first_served: phases.iter().map(|_| OnceLock::new()).collect(),
            failed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            lost_in_flight: AtomicU64::new(0),
            lost_idle: AtomicU64::new(0),
            closed_by_server: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            hold: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            held_served: AtomicU64::new(0),
        }
    }

    fn served(&self) {
        let phase = self.phase.load(Ordering::Acquire);
        self.served[phase].fetch_add(1, Ordering::Relaxed);
        let _ = self.first_served[phase].set(Instant::now());
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.note(what);
    }

    /// A request on a connection opened at `opened`, begun at `started`, failed: lost with
    /// the killed successor if it may be, else failed.
    fn request_failed(&self, what: String, opened: Instant, started: Instant) {
        let phase = self.phase.load(Ordering::Acquire);
        let before_reaped = self.reaped.get().is_none_or(|reaped| opened < *reaped);
        if !self.lossy.contains(&phase) || !before_reaped {
            return self.fail(what);
        }
        let in_flight = self.killed.get().is_none_or(|killed| started < *killed);
        let (counter, how) = if in_flight {
            (&self.lost_in_flight, "in flight at the kill")
        } else {
            (&self.lost_idle, "begun after the kill")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.note(format!("lost with the killed successor ({how}): {what}"));
    }

    fn note(&self, what: String) {
        let phase = self.phases[self.phase.load(Ordering::Acquire)];
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() < 20 {
            failures.push(format!("[{phase}] {what}"));
        }
    }

    /// A connection attempt failed: refused, or another error.
    fn connect_failed(&self, who: &str, error: io::Error) {
        if error.kind() == ErrorKind::ConnectionRefused {
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.note(format!("{who}: connection refused"));
        } else {
            self.fail(format!("{who}: connect: {error}"));
        }
    }

    /// A held client may begin a request (`None`: held). Counted busy before the hold is
    /// looked at, and the hold set before the busy count is (both `SeqCst`): a client that
    /// missed the hold is seen busy by [`hold`](Self::hold).
    fn enter(&self) -> Option<Busy<'_>> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let busy = Busy(self);
        (!self.hold.load(Ordering::SeqCst)).then_some(busy)
    }

    /// Holds the held clients: returns once none has a request under way (bounded: each
    /// request is bounded by its timeouts).
    fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + 3 * LIMIT;
        while self.busy.load(Ordering::SeqCst) != 0 {
            assert!(
                Instant::now() < deadline,
                "the held clients did not finish their requests"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn release(&self) {
        self.hold.store(false, Ordering::SeqCst);
    }
}

/// The clients of a [`Load`].
#[derive(Default)]
struct Clients<'a> {
    /// Threads opening a new connection per request (`Connection: close`).
    fresh: usize,
    /// One keep-alive client per entry (its pause between requests).
    keep_alive: &'a [Duration],
    /// Threads as `fresh`, which begin no request while [`Counters::hold`] holds them.
    held: usize,
}

struct Load {
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
    done: mpsc::Receiver<()>,
}

/// What the load saw.
#[derive(Debug)]
struct Report {
    served: Vec<(&'static str, u64)>,
    failed: u64,
    refused: u64,
    lost_in_flight: u64,
    lost_idle: u64,
    closed_by_server: u64,
    held_served: u64,
    failures: Vec<String>,
}

impl Load {
    /// `fresh` threads opening a new connection per request (`Connection: close`), and one
    /// keep-alive client per entry of `keep_alive` (its pause between requests), counted in
    /// [`PHASES`]; every failure is one.
    fn start(addr: SocketAddr, fresh: usize, keep_alive: &[Duration]) -> Load {
        let clients = Clients {
            fresh,
            keep_alive,
            held: 0,
        };
        Load::with(addr, &PHASES, &[], clients)
    }

    /// `clients`, counted in `phases`; in the `lossy` ones, requests on connections opened
    /// before the killed successor was reaped may be lost.
    fn with(
        addr: SocketAddr,
        phases: &'static [&'static str],
        lossy: &'static [usize],
        clients: Clients<'_>,
    ) -> Load {
        let counters = Arc::new(Counters::new(phases, lossy));
        let until = Instant::now() + LOAD_AT_MOST;
        let (done_tx, done) = mpsc::channel();
        let mut threads = Vec::new();
        let fresh = (0..clients.fresh).map(|n| (n, false));
        for (n, held) in fresh.chain((0..clients.held).map(|n| (n, true))) {
            let (counters, done_tx) = (counters.clone(), done_tx.clone());
            threads.push(std::thread::spawn(move || {
                fresh_client(n, addr, &counters, until, held);
                let _ = done_tx.send(());
            }));
        }
        for (n, &pause) in clients.keep_alive.iter().enumerate() {
            let (counters, done_tx) = (counters.clone(), done_tx.clone());
            threads.push(std::thread::spawn(move || {
                keep_alive_client(n, addr, pause, &counters, until);
                let _ = done_tx.send(());
            }));
        }
        Load {
            counters,
            threads,
            done,
        }
    }

    fn set_phase(&self, phase: usize) {
        self.counters.phase.store(phase, Ordering::Release);
    }

    fn served_in(&self, phase: usize) -> u64 {
        self.counters.served[phase].load(Ordering::Relaxed)
    }

    /// Polls (bounded) until `at_least` requests were served in `phase`.
    fn wait_served(&self, phase: usize, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.served_in(phase) < at_least {
            assert!(
                Instant::now() < deadline,
                "only {} requests served in phase {:?} within 20 s; failures: {:?}",
                self.served_in(phase),
                self.counters.phases[phase],
                self.counters.failures.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients (each finishes its request under way, bounded) and reports.
    fn stop(mut self) -> Report {
        self.counters.stop.store(true, Ordering::Release);
        self.counters.release();
        // Each request is bounded by LIMIT for the connect and LIMIT per read or write.
        let deadline = Instant::now() + 4 * LIMIT;
        for _ in 0..self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.done
                .recv_timeout(left)
                .expect("the load clients stop within their request timeouts");
        }
        for thread in self.threads.drain(..) {
            thread.join().expect("a load client panicked");
        }
        let c = &self.counters;
        Report {
            served: c
                .phases
                .iter()
                .zip(&c.served)
                .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
                .collect(),
            failed: c.failed.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            lost_in_flight: c.lost_in_flight.load(Ordering::Relaxed),
            lost_idle: c.lost_idle.load(Ordering::Relaxed),
            closed_by_server: c.closed_by_server.load(Ordering::Relaxed),
            held_served: c.held_served.load(Ordering::Relaxed),
            failures: c.failures.lock().unwrap().clone(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A failing test: the clients stop soon (their loops check the flag), not at the end
        // of LOAD_AT_MOST.
        self.counters.stop.store(true, Ordering::Release);
        self.counters.release();
    }
}

fn running(counters: &Counters, until: Instant) -> bool {
    !counters.stop.load(Ordering::Acquire) && Instant::now() < until
}

/// A new connection per request: `GET /` with `Connection: close`, answered in full. `held`:
/// begins no request while the counters hold it, and any failure of it is one (it is never in
/// flight at a kill).
fn fresh_client(n: usize, addr: SocketAddr, counters: &Counters, until: Instant, held: bool) {
    let who = if held {
        format!("held new-connection client {n}")
    } else {
        format!("new-connection client {n}")
    };
    while running(counters, until) {
        let busy = if held {
            let Some(busy) = counters.enter() else {
                busy_wait();
                continue;
            };
            Some(busy)
        } else {
            None
        };
        let opened = Instant::now();
        match tcp(addr) {
            Err(error) => {
                counters.connect_failed(&who, error);
                drop(busy);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Ok(stream) => match Conn::new(stream).get("/", true).map(|r| r.check_root()) {
                Ok(Ok(_)) => {
                    counters.served();
                    if held {
                        counters.held_served.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Err(wrong)) if held => counters.fail(format!("{who}: {wrong}")),
                Err(error) if held => counters.fail(format!("{who}: {error}")),
                Ok(Err(wrong)) => {
                    counters.request_failed(format!("{who}: {wrong}"), opened, opened)
                }
                Err(error) => counters.request_failed(format!("{who}: {error}"), opened, opened),
            },
        }
        drop(busy);
        // Pacing, so that two cores also run the inspectors (and ports are not used up).
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A held client's wait before it looks at the hold again.
fn busy_wait() {
    std::thread::sleep(Duration::from_millis(1));
}

/// Requests one after the other on one connection; a new connection only when the server
/// ended the last one with `Connection: close` after answering (or after a failure).
fn keep_alive_client(
    n: usize,
    addr: SocketAddr,
    pause: Duration,
    counters: &Counters,
    until: Instant,
) {
    let who = format!("keep-alive client {n}");
    let mut conn: Option<(Conn<TcpStream>, u64, Instant)> = None;
    while running(counters, until) {
        let (c, requests, opened) = match &mut conn {
            Some(conn) => conn,
            None => {
                let opened = Instant::now();
                match tcp(addr) {
                    Ok(stream) => conn.insert((Conn::new(stream), 0, opened)),
                    Err(error) => {
                        counters.connect_failed(&who, error);
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
        };
        *requests += 1;
        let (nth, opened, started) = (*requests, *opened, Instant::now());
        match c.get("/", false) {
            Ok(response) => match response.check_root() {
                Ok(_) => {
                    counters.served();
                    if response.closes() {
                        counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
                Err(wrong) => {
                    counters.request_failed(
                        format!("{who}, request {nth} on its connection: {wrong}"),
                        opened,
                        started,
                    );
                    conn = None;
                }
            },
            Err(error) => {
                counters.request_failed(
                    format!("{who}, request {nth} on its connection: {error}"),
                    opened,
                    started,
                );
                conn = None;
            }
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Two binary upgrades in a row
// ---------------------------------------------------------------------------------------------

/// The inspectors' graceful shutdown deadline (`--shutdown-timeout`).
const SHUTDOWN: Duration = Duration::from_secs(5);
/// Allowed on top of it for an old inspector to exit, counted from the new one's spawn (its
/// start, the handover, the process exit).
const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// The probation the tests give a new inspector (`--upgrade-probation`; 5 s by default): the
/// old one exits once it has passed.
const PROBATION: Duration = Duration::from_millis(500);
const PROBATION_ARG: &str = "0.5";

/// `args` and `--upgrade --upgrade-probation PROBATION_ARG`: a new inspector taking over.
fn upgrade_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    args.extend(["--upgrade", "--upgrade-probation", PROBATION_ARG]);
    args
}

/// Starts the next inspector with `--upgrade` (and a [`PROBATION`] of 0.5 s), waits for `old`
/// to exit by itself (status 0, `handed over to the new process`, no earlier than the
/// probation, within the shutdown deadline and margin). Returns the new inspector, how long
/// the old one took to exit, and how it did.
fn upgrade(old: &mut Inspector, args: &[&str]) -> (Inspector, Duration, Exited) {
    let args = upgrade_args(args);
    let since = Instant::now();
    let new = start(command(&args));
    assert_eq!(
        new.http, old.http,
        "the new inspector serves the same HTTP address"
    );
    assert_eq!(
        new.https, old.https,
        "the new inspector serves the same HTTPS address"
    );
    let exited = old.process.wait(SHUTDOWN + LIMIT);
    let took = since.elapsed();
    assert!(
        exited.status.success(),
        "the old inspector exits with status 0: {exited:#?}"
    );
    assert!(
        exited
            .stdout
            .iter()
            .any(|line| line == "handed over to the new process"),
        "the old inspector says it handed over: {exited:#?}"
    );
    assert!(
        took <= SHUTDOWN + EXIT_MARGIN,
        "the old inspector exited {took:?} after the new one was started: more than its \
         shutdown deadline {SHUTDOWN:?} + {EXIT_MARGIN:?}; {exited:#?}"
    );
    // It keeps its listening sockets until the new one says it is healthy, after its
    // probation (counted from the new one's READY, which comes after its spawn).
    assert!(
        took >= PROBATION,
        "the old inspector exited {took:?} after the new one was started: before the new \
         one's probation of {PROBATION:?} passed; {exited:#?}"
    );
    (new, took, exited)
}

/// A request on the idle keep-alive connection K: answered, by a process that took K over
/// (and has handed nothing over yet).
fn check_k(k: &mut Conn<TcpStream>, by: &str) {
    let response = k
        .get("/stats", false)
        .unwrap_or_else(|e| panic!("the idle connection K, once {by} serves it: {e}"));
    assert_eq!(response.status, 200, "{response:?}");
    assert!(!response.closes(), "K stays open: {response:?}");
    let stats = response.json().unwrap();
    assert!(
        count(&stats, "taken_over") >= 1,
        "K was taken over by {by}: {stats}"
    );
    assert_eq!(count(&stats, "handed_over"), 0, "{by}: {stats}");
    let root = k.get("/", false).expect("GET / on K");
    root.check_root().expect("GET / on K");
}

#[test]
fn two_consecutive_upgrades_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().unwrap();
    let shutdown = SHUTDOWN.as_secs().to_string();
    // --http1-timeout: K is idle for the whole test, longer than the default 15 s may be.
    let args = [
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--upgrade-socket",
        socket,
        "--shutdown-timeout",
        &shutdown,
        "--http1-timeout",
        "120",
    ];
    let mut one = start(command(&args));
    let addr = one.http_addr();
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::symlink_metadata(socket).expect("the upgrade socket exists");
        assert!(meta.file_type().is_socket());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "upgrade socket mode"
        );
    }

    // K: one request, answered, then idle.
    let mut k = http(addr);
    let first = k.get("/", false).expect("GET / on K");
    first.check_root().expect("GET / on K");
    assert!(!first.closes());

    let stats_one = stats(addr);
    assert_eq!(count(&stats_one, "taken_over"), 0, "{stats_one}");
    assert_eq!(count(&stats_one, "handed_over"), 0, "{stats_one}");

    let load = Load::start(
        addr,
        2,
        &[
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_millis(5),
            Duration::from_millis(20),
        ],
    );
    load.wait_served(0, 50);

    // #1 -> #2.
    load.set_phase(1);
    let (mut two, took_one, _) = upgrade(&mut one, &args);
    load.set_phase(2);
    // Only #2 runs now: K answered means #2 took it over.
    check_k(&mut k, "#2");
    let stats_two = stats(addr);
    assert!(count(&stats_two, "taken_over") >= 1, "{stats_two}");
    assert_eq!(count(&stats_two, "handed_over"), 0, "{stats_two}");
    load.wait_served(2, 50);

    // #2 -> #3.
    load.set_phase(3);
    let (mut three, took_two, _) = upgrade(&mut two, &args);
    load.set_phase(4);
    check_k(&mut k, "#3");
    load.wait_served(4, 50);

    let report = load.stop();
    eprintln!(
        "#1 exited {took_one:?} after #2 was started, #2 {took_two:?} after #3; load: {report:#?}"
    );
    assert_eq!(report.failed, 0, "failed requests: {report:#?}");
    assert!(report.failures.is_empty(), "{report:#?}");
    eprintln!(
        "keep-alive connections ended by the server with `Connection: close`: {}",
        report.closed_by_server
    );
    assert_eq!(report.refused, 0, "refused connections: {report:#?}");
    for (phase, served) in &report.served {
        assert!(*served > 0, "nothing served during {phase:?}: {report:#?}");
    }

    let stats_three = stats(addr);
    assert!(count(&stats_three, "taken_over") >= 1, "{stats_three}");
    let exited = three.process.stop("TERM");
    assert!(exited.status.success(), "#3 stops on SIGTERM: {exited:#?}");
    assert!(
        !Path::new(socket).exists(),
        "the last inspector removes its upgrade socket: {exited:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. SIGHUP reloads the certificate
// ---------------------------------------------------------------------------------------------

/// A CA, and certificates for localhost and 127.0.0.1 it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "inspector_upgrade test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf certificate: (its DER, certificate PEM, key PEM).
    fn leaf(&self, name: &str) -> (CertificateDer<'static>, String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.der().clone(), cert.pem(), key.serialize_pem())
    }

    /// A client trusting this CA only.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn https(addr: &str, client: &Arc<rustls::ClientConfig>) -> Conn<Tls> {
    let addr: SocketAddr = addr.parse().unwrap();
    let tcp = tcp(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let name = ServerName::try_from("localhost").unwrap();
    let tls = rustls::ClientConnection::new(client.clone(), name).unwrap();
    Conn::new(rustls::StreamOwned::new(tls, tcp))
}

/// `GET /` over the TLS connection (the handshake, for the first): 200, encrypted; the
/// certificate the server presented.
fn tls_get(conn: &mut Conn<Tls>, what: &str) -> CertificateDer<'static> {
    let response = conn
        .get("/", false)
        .unwrap_or_else(|e| panic!("{what}: GET /: {e}"));
    let json = response
        .check_root()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(json["is_encrypted"], Value::Bool(true), "{what}: {json}");
    assert!(!response.closes(), "{what}: {response:?}");
    let certs = conn
        .stream()
        .conn
        .peer_certificates()
        .expect("the server's certificates");
    certs[0].clone().into_owned()
}

#[test]
fn sighup_reloads_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    let ca = Ca::new();
    let (der_one, cert_one, key_one) = ca.leaf("certificate one");
    let (der_two, cert_two, key_two) = ca.leaf("certificate two");
    assert_ne!(der_one, der_two);
    std::fs::write(&cert_path, cert_one).unwrap();
    std::fs::write(&key_path, key_one).unwrap();

    let inspector = start(command(&[
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--cert",
        cert_path.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
    ]));
    let client = ca.client();

    let mut a = https(&inspector.https, &client);
    assert_eq!(
        tls_get(&mut a, "connection A"),
        der_one,
        "A sees certificate 1"
    );

    std::fs::write(&cert_path, cert_two).unwrap();
    std::fs::write(&key_path, key_two).unwrap();
    assert!(send_signal(inspector.process.pid(), "HUP"), "kill -s HUP");
    inspector.process.line_where(
        |line| line == "reloaded the certificate",
        |line| line.starts_with("certificate reload failed"),
    );

    let mut b = https(&inspector.https, &client);
    assert_eq!(
        tls_get(&mut b, "connection B, after SIGHUP"),
        der_two,
        "a new connection sees certificate 2"
    );
    assert_eq!(
        tls_get(&mut a, "connection A, after SIGHUP"),
        der_one,
        "connection A keeps certificate 1, and still works"
    );
    // And once more, a new connection: still certificate 2.
    let mut c = https(&inspector.https, &client);
    assert_eq!(tls_get(&mut c, "connection C"), der_two);
}

// ---------------------------------------------------------------------------------------------
// 3. Socket activation
// ---------------------------------------------------------------------------------------------

#[test]
fn listen_fds_socket_activation() {
    use std::os::fd::AsRawFd;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // --http is given an address in use: binding it would fail the start, so a start that
    // succeeds did not bind it.
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = blocker.local_addr().unwrap().to_string();

    // `exec` keeps the shell's pid: LISTEN_PID=$$ is the inspector's own pid.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(example_path())
        .args(["--http", &blocked, "--https", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env("LISTEN_FDS", "1");
    let raw = listener.as_raw_fd();
    // SAFETY: between fork and exec, only system calls (dup2, fcntl) on descriptors the child
    // has; nothing allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
            let listener = BorrowedFd::borrow_raw(raw);
            if raw == 3 {
                // dup2 onto itself would keep FD_CLOEXEC: clear it.
                rustix::io::fcntl_setfd(listener, rustix::io::FdFlags::empty())?;
            } else {
                // dup2 clears FD_CLOEXEC on the new descriptor. Never closed here: it is the
                // inspector's.
                let mut three = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(3));
                rustix::io::dup2(listener, &mut three)?;
            }
            Ok(())
        });
    }
    let mut inspector = start(cmd);
    // The inspector has its own copy now.
    drop(listener);

    assert_eq!(
        inspector.http,
        vec![addr.to_string()],
        "the inherited socket is served as --http, and only it"
    );
    assert!(inspector.process.is_running());

    let response = http(addr)
        .get("/", true)
        .unwrap_or_else(|e| panic!("GET / on the inherited socket {addr}: {e}"));
    let json = response.check_root().unwrap();
    assert_eq!(json["local_port"], Value::from(addr.port()), "{json}");
    assert_eq!(json["is_unix"], Value::Bool(false), "{json}");

    drop(blocker);
    let exited = inspector.process.stop("TERM");
    assert!(exited.status.success(), "{exited:#?}");
}

// ---------------------------------------------------------------------------------------------
// 4. The upgrade socket refuses a process of another user
// ---------------------------------------------------------------------------------------------

/// The user a process of another user runs as (`nobody`).
const NOBODY: u32 = 65534;

#[test]
fn upgrade_socket_refuses_another_user() {
    if !rustix::process::getuid().is_root() {
        eprintln!(
            "upgrade_socket_refuses_another_user: SKIPPED: not running as root, so no process \
             of another user can be started"
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The directory and the socket open to everyone: only SO_PEERCRED may refuse.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().unwrap();
    let args = [
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--upgrade-socket",
        socket,
    ];
    let mut one = start(command(&args));
    let addr = one.http_addr();
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    let mut upgrade_args = args.to_vec();
    upgrade_args.push("--upgrade");
    let mut cmd = command(&upgrade_args);
    // Where the inspector writes its generated CA: a directory anyone may write to.
    cmd.env("TMPDIR", "/tmp").uid(NOBODY).gid(NOBODY);
    let mut intruder = Process::spawn(cmd);
    let exited = intruder.wait(LIMIT);
    assert!(
        !exited.status.success(),
        "the other user's takeover fails: {exited:#?}"
    );
    // Refused both ways: the taker sees a server of another user, and the old inspector (its
    // log, checked below) a taker of another user; not by a file permission.
    assert!(
        exited.stderr.contains("error: ")
            && (exited.stderr.contains("not this user")
                || exited
                    .stderr
                    .contains("closed without handing the listeners over")),
        "refused by uid, not by a file permission: {exited:#?}"
    );

    // The first inspector did not hand anything over: it runs and serves.
    assert!(one.process.is_running(), "the first inspector still runs");
    http(addr)
        .get("/", true)
        .expect("GET / after the refused takeover")
        .check_root()
        .unwrap();
    let stats_one = stats(addr);
    assert_eq!(count(&stats_one, "handed_over"), 0, "{stats_one}");

    // A takeover by the same user still works afterwards.
    let (mut two, _, exited) = upgrade(&mut one, &args);
    assert!(
        exited
            .stderr
            .contains("upgrade socket: refused a process of another user"),
        "the first inspector logged the refusal: {exited:#?}"
    );
    http(addr)
        .get("/", true)
        .expect("GET / once #2 took over")
        .check_root()
        .unwrap();
    let exited = two.process.stop("TERM");
    assert!(exited.status.success(), "{exited:#?}");
}

// ---------------------------------------------------------------------------------------------
// 5. A successor killed on probation: the old inspector takes its listeners back
// ---------------------------------------------------------------------------------------------

/// Phases of [`successor_killed_after_ready_rolls_back`].
const ROLLBACK_PHASES: [&str; 6] = [
    "old alone",
    "successor started, on probation",
    "successor killed, not reaped yet",
    "old alone again",
    "old -> new upgrade",
    "new alone",
];
/// While the successor is killed and just after: requests on its connections die with it.
const ROLLBACK_LOSSY: [usize; 2] = [2, 3];

/// How soon the old inspector must answer again once its successor is killed.
const ROLLBACK_WITHIN: Duration = Duration::from_secs(1);

/// Polls (new connections, bounded) until `GET /stats` is answered by a process that took an
/// idle connection over: the new inspector accepts, and the old one, told so, handed its idle
/// connections to it. How long it took since `since`.
fn await_takeover(addr: SocketAddr, since: Instant) -> Duration {
    let deadline = Instant::now() + LIMIT;
    loop {
        let stats = stats(addr);
        if count(&stats, "taken_over") >= 1 {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no process took an idle connection over within {LIMIT:?}: {stats}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `GET /` on the idle keep-alive connection `k`, answered (and it stays open): the first
/// request of `k`, which then stays idle.
fn keep_alive_request(k: &mut Conn<TcpStream>, what: &str) {
    let response = k
        .get("/", false)
        .unwrap_or_else(|e| panic!("{what}: GET /: {e}"));
    response
        .check_root()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(!response.closes(), "{what} stays open: {response:?}");
}

#[test]
fn successor_killed_after_ready_rolls_back() {
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().unwrap();
    let shutdown = SHUTDOWN.as_secs().to_string();
    let args = [
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--upgrade-socket",
        socket,
        "--shutdown-timeout",
        &shutdown,
        "--http1-timeout",
        "120",
    ];
    let mut old = start(command(&args));
    let addr = old.http_addr();

    let load = Load::with(
        addr,
        &ROLLBACK_PHASES,
        &ROLLBACK_LOSSY,
        Clients {
            fresh: 2,
            keep_alive: &[Duration::ZERO, Duration::from_millis(5)],
            held: 2,
        },
    );
    load.wait_served(0, 50);
    // K: an idle connection the old inspector hands over once it is told its successor
    // accepts (the sign it was told).
    let mut k = http(addr);
    keep_alive_request(&mut k, "K");
    let before = stats(addr);
    assert_eq!(count(&before, "handed_over"), 0, "{before}");

    // The successor, on a probation longer than the test: it never says it is healthy.
    load.set_phase(1);
    let mut successor_args = args.to_vec();
    successor_args.extend(["--upgrade", "--upgrade-probation", "30"]);
    let since = Instant::now();
    let mut successor = start(command(&successor_args));
    // READY, seen from outside: a process that took K (or another idle connection) over
    // answers, so the old one was told the successor accepts, stopped accepting and drained.
    let took_over = await_takeover(addr, since);
    load.wait_served(1, 20);

    // Killed right after READY, while no held client has a request under way.
    load.counters.hold();
    load.set_phase(2);
    let killed = Instant::now();
    load.counters.killed.set(killed).unwrap();
    let pid = rustix::process::Pid::from_raw(successor.process.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("SIGKILL");
    let exited = successor.process.wait(LIMIT);
    let reaped = Instant::now();
    load.counters.reaped.set(reaped).unwrap();
    load.set_phase(3);
    assert_eq!(
        exited.status.signal(),
        Some(sigkill()),
        "the successor died of SIGKILL: {exited:#?}"
    );
    load.counters.release();
    let held_at_kill = load.counters.held_served.load(Ordering::Relaxed);

    // The first answer after the kill, on a new connection: only the old inspector runs (the
    // successor is reaped), and it is the one that handed K over and accepted before.
    let again = stats(addr);
    let answered = killed.elapsed();
    assert_eq!(
        count(&again, "taken_over"),
        0,
        "the old inspector answers: {again}"
    );
    assert!(
        count(&again, "handed_over") >= 1,
        "the old inspector answers (it handed K over): {again}"
    );
    assert!(
        count(&again, "accepted") > count(&before, "accepted"),
        "the old inspector answers: {again}, before: {before}"
    );
    assert!(
        answered <= ROLLBACK_WITHIN,
        "the old inspector answered {answered:?} after the successor was killed (reaped after \
         {:?}): more than {ROLLBACK_WITHIN:?}",
        reaped - killed
    );
    assert!(old.process.is_running(), "the old inspector did not exit");
    load.wait_served(3, 50);
    assert!(old.process.is_running(), "the old inspector did not exit");
    let load_again = load.counters.first_served[3]
        .get()
        .map(|at| at.saturating_duration_since(killed));

    eprintln!(
        "successor took over {took_over:?} after its spawn; killed, reaped {:?} later; the old \
         inspector answered {answered:?} after the kill (the load's first answer after the \
         reap: {load_again:?})",
        reaped - killed
    );

    // A healthy upgrade still works: the old one exits by itself after the new one's
    // probation. First, its upgrade socket is where a new process looks for it (the
    // successor had put its own there once it accepted).
    if let Err(error) = std::os::unix::net::UnixStream::connect(socket) {
        panic!(
            "the old inspector cannot be upgraded again after the rollback: its upgrade socket \
             is not at {socket} any more ({error}; the killed successor's socket file is left \
             there)"
        );
    }
    load.set_phase(4);
    let (mut new, took, exited_old) = upgrade(&mut old, &args);
    load.set_phase(5);
    assert!(
        exited_old.stderr.contains(
            "upgrade: the new process went away before it said it is healthy; accepting again"
        ),
        "the old inspector logged the rollback: {exited_old:#?}"
    );
    load.wait_served(5, 50);
    let report = load.stop();
    eprintln!("the second upgrade took {took:?}; load: {report:#?}");
    assert_eq!(report.refused, 0, "refused connections: {report:#?}");
    // Requests on the successor's connections when it was killed, in flight or begun on one
    // of them after (a keep-alive connection it held), die with it (documented): counted as
    // lost (reported), not failed. Anything else (a held client's request, a request on a
    // connection opened once the successor was reaped, a failure before the kill or in the
    // second upgrade) is a failure.
    assert_eq!(report.failed, 0, "failed requests: {report:#?}");
    eprintln!(
        "requests lost with the killed successor: {} in flight at the kill, {} begun after it \
         on one of its connections",
        report.lost_in_flight, report.lost_idle
    );
    assert!(
        report.held_served > held_at_kill,
        "the held clients were served after the rollback: {report:#?}"
    );
    // (Between the kill and the reap, a millisecond or two, nothing need be answered.)
    for (phase, served) in report
        .served
        .iter()
        .filter(|(phase, _)| *phase != ROLLBACK_PHASES[2])
    {
        assert!(*served > 0, "nothing served during {phase:?}: {report:#?}");
    }
    let exited = new.process.stop("TERM");
    assert!(exited.status.success(), "{exited:#?}");
}

/// SIGKILL's number.
fn sigkill() -> i32 {
    rustix::process::Signal::KILL.as_raw()
}

// ---------------------------------------------------------------------------------------------
// 6. A stuck peer on the upgrade socket does not hold an upgrade up
// ---------------------------------------------------------------------------------------------

/// How soon an upgrade must complete (the successor accepts, and the old one handed over to
/// it), counted from the successor's spawn, with stuck peers on the upgrade socket.
const UPGRADE_WITHIN: Duration = Duration::from_secs(2);
/// How long a peer of the upgrade socket may take to complete a frame it began.
const FRAME_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the upgrade socket as a taker and reads the `LISTENERS` frame (its descriptors
/// are dropped, unread): the old process serves this peer now, and waits for its `READY`.
fn peer_taking_listeners(socket: &str) -> std::os::unix::net::UnixStream {
    let mut peer = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to the upgrade socket {socket}: {e}"));
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    peer.set_write_timeout(Some(LIMIT)).unwrap();
    let mut header = [0u8; 8];
    if let Err(error) = peer.read_exact(&mut header) {
        panic!(
            "no LISTENERS frame within {LIMIT:?} ({error}): the upgrade socket serves its peers \
             at once, so another peer (silent, or stuck in a frame) must not hold this one up"
        );
    }
    let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    assert_eq!(
        (header[0], header[1], length),
        (1, 2, 4),
        "LISTENERS with the two TCP listeners, two bytes each: {header:?}"
    );
    let mut payload = [0u8; 4];
    peer.read_exact(&mut payload)
        .expect("the LISTENERS payload");
    // --http: TCP, plain; --https: TCP, TLS.
    assert_eq!(
        payload,
        [0, 0, 0, 1],
        "transport and steps of each listener"
    );
    // Built with `http3`, the inspector serves HTTP/3 at --https: a `QUIC` frame follows (flag
    // 1 in the third header byte) with its UDP socket and a link end (two descriptors) and
    // its CID tag.
    if header[2] & 1 != 0 {
        let mut quic = [0u8; 9];
        peer.read_exact(&mut quic).expect("the QUIC frame");
        assert_eq!(
            (quic[0], quic[1], &quic[4..8]),
            (6, 2, &[1, 0, 0, 0][..]),
            "QUIC: one UDP socket: {quic:?}"
        );
    }
    peer
}

/// A peer stuck in a frame: it took the listeners, sent the header of a frame (kind 9, 100
/// bytes of payload), and sends one byte of it a second from another thread (at most 30, none
/// once `stop` is dropped or a write fails), which returns how many it sent.
struct StuckPeer {
    stream: std::os::unix::net::UnixStream,
    /// When the header was sent.
    began: Instant,
    stop: mpsc::Sender<()>,
    trickle: JoinHandle<u32>,
}

impl StuckPeer {
    fn connect(socket: &str) -> StuckPeer {
        let mut stream = peer_taking_listeners(socket);
        stream
            .write_all(&[0x09, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00])
            .expect("the stuck peer's frame header");
        let began = Instant::now();
        let (stop, stopped) = mpsc::channel::<()>();
        let mut writer = stream.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            let mut sent = 0u32;
            while sent < 30 {
                match stopped.recv_timeout(Duration::from_secs(1)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
                if writer.write_all(b"x").is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        });
        StuckPeer {
            stream,
            began,
            stop,
            trickle,
        }
    }

    /// Waits (bounded by the read timeout) for the server's end of the stream to close; stops
    /// the trickle. How long after the header that was, and how many bytes were trickled.
    fn wait_cut(self) -> (Duration, u32) {
        let StuckPeer {
            mut stream,
            began,
            stop,
            trickle,
        } = self;
        let mut rest = Vec::new();
        let end = stream.read_to_end(&mut rest);
        let cut = began.elapsed();
        assert!(
            matches!(&end, Ok(0))
                || matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "the stuck peer's stream ended (not timed out, nothing more sent to it): {end:?}, \
             {rest:?}"
        );
        drop(stop);
        (cut, trickle.join().expect("the trickle thread"))
    }
}

#[test]
fn stuck_peer_does_not_block_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().unwrap();
    let args = [
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--upgrade-socket",
        socket,
    ];
    let mut old = start(command(&args));
    let addr = old.http_addr();
    let mut k = http(addr);
    keep_alive_request(&mut k, "K");

    // A peer that took the listeners and says nothing (one at a time, the old inspector would
    // wait 60 s for its READY), and one stuck in a frame (one at a time: 2 s).
    let silent = peer_taking_listeners(socket);
    let stuck = StuckPeer::connect(socket);

    let since = Instant::now();
    let mut new = start(command(&upgrade_args(&args)));
    assert_eq!((&new.http, &new.https), (&old.http, &old.https));
    let took_over = await_takeover(addr, since);
    assert!(
        took_over <= UPGRADE_WITHIN,
        "the upgrade completed {took_over:?} after the successor was started, with stuck peers \
         on the upgrade socket: more than {UPGRADE_WITHIN:?}"
    );
    // K moved to the new inspector, which answers.
    check_k(&mut k, "the new inspector");
    http(addr)
        .get("/", true)
        .expect("GET / from the new inspector")
        .check_root()
        .unwrap();

    let exited = old.process.wait(SHUTDOWN + LIMIT);
    let took = since.elapsed();
    assert!(
        exited.status.success(),
        "the old inspector exits 0: {exited:#?}"
    );
    assert!(
        exited
            .stdout
            .iter()
            .any(|line| line == "handed over to the new process"),
        "{exited:#?}"
    );
    // The old inspector is gone: so is its end of the stuck peers' streams.
    let (_, sent_to_old) = stuck.wait_cut();
    drop(silent);

    // The new inspector serves the upgrade socket in turn, and cuts a peer whose frame is not
    // complete within 2 s, though it sends a byte a second.
    let stuck = StuckPeer::connect(socket);
    let (cut, sent) = stuck.wait_cut();
    assert!(
        cut <= FRAME_TIMEOUT + EXIT_MARGIN && sent >= 1,
        "a peer trickling a frame was cut {cut:?} after it began it (having sent {sent} \
         byte(s) of it): not within {FRAME_TIMEOUT:?} + {EXIT_MARGIN:?}"
    );
    eprintln!(
        "the upgrade completed {took_over:?} after the successor's spawn; the old inspector \
         exited after {took:?} (the stuck peer had sent {sent_to_old} byte(s)); a peer \
         trickling a frame to the new one was cut {cut:?} after its header, having sent {sent} \
         byte(s)"
    );
    let exited = new.process.stop("TERM");
    assert!(exited.status.success(), "{exited:#?}");
    assert!(
        exited.stderr.contains("not complete within"),
        "the new inspector logged why it cut the peer: {exited:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. A taker serving the TLS listener without TLS is refused
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_listener_taken_without_tls_is_refused() {
    use hyper_remote_client::{
        upgrade::{InheritedListener, ListenerSteps, Takeover, TakeoverError},
        Listener, Options, Server,
    };

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().unwrap();
    let unix = dir.path().join("inspector.sock");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    let ca = Ca::new();
    let (_, cert, key) = ca.leaf("the old inspector");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let mut old = start(command(&[
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--unix",
        unix.to_str().unwrap(),
        "--cert",
        cert_path.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
        "--upgrade-socket",
        socket,
        "--http1-timeout",
        "120",
    ]));
    let addr = old.http_addr();
    let client = ca.client();
    // Keep-alive connections, plain and TLS: a draining inspector would end or move them.
    let mut k = http(addr);
    keep_alive_request(&mut k, "K");
    let mut t = https(&old.https, &client);
    tls_get(&mut t, "T");

    let serves_on = |k: &mut Conn<TcpStream>, t: &mut Conn<Tls>, when: &str| {
        keep_alive_request(k, &format!("K, {when}"));
        tls_get(t, &format!("T, {when}"));
        http(addr)
            .get("/", true)
            .unwrap_or_else(|e| panic!("{when}: GET / on a new connection: {e}"))
            .check_root()
            .unwrap();
        tls_get(&mut https(&old.https, &client), &format!("{when}: HTTPS"));
        let stats = stats(addr);
        assert_eq!(count(&stats, "handed_over"), 0, "{when}: {stats}");
    };

    // The inspector's order: the HTTP listener(s), the HTTPS one (the last TCP one), the
    // unix one.
    let mut takeover = within("Takeover::connect", Takeover::connect(socket))
        .await
        .expect("Takeover::connect");
    let steps = takeover.steps();
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_eq!(steps[0], Some(ListenerSteps::default()), "--http: plain");
    let tls = steps[1].expect("the old inspector says what it ran on --https");
    assert!(
        tls.tls && tls.proxy_protocol.is_none() && !tls.custom,
        "--https: TLS only: {tls:?}"
    );
    assert_eq!(steps[2], Some(ListenerSteps::default()), "--unix: plain");

    let listeners = takeover.take_listeners();
    let kinds: Vec<_> = listeners
        .iter()
        .map(|listener| match listener {
            InheritedListener::Tcp(listener) => listener.local_addr().unwrap().to_string(),
            InheritedListener::Unix(_) => String::from("unix"),
            _ => String::from("?"),
        })
        .collect();
    assert_eq!(
        kinds,
        [old.http[0].clone(), old.https.clone(), String::from("unix")]
    );
    let mut server = Server::new(Options::default());
    for listener in listeners {
        server = server.listener(Listener::from(listener));
    }
    let error = match server.take_over(takeover) {
        Err(error) => error,
        Ok(_) => panic!("a takeover serving the TLS listener as plain HTTP was accepted"),
    };
    let message = error.to_string();
    match error {
        TakeoverError::StepsDiffer {
            index,
            address,
            old: was,
            new,
        } => {
            assert_eq!(index, 1, "the HTTPS listener: {message}");
            assert_eq!(address, old.https, "{message}");
            assert_eq!(was, tls, "{message}");
            assert_eq!(new, ListenerSteps::default(), "{message}");
            assert!(
                message.contains("TLS") && message.contains("plain HTTP"),
                "{message}"
            );
        }
        error => panic!("refused, but not for the steps: {error:?}"),
    }
    // The server and the takeover are dropped: the old inspector was told nothing.
    serves_on(&mut k, &mut t, "after the refused takeover");

    // The same, the change allowed on the HTTPS listener: accepted, but never served (no
    // READY): the old inspector goes on.
    let mut takeover = within("Takeover::connect", Takeover::connect(socket))
        .await
        .expect("Takeover::connect, again");
    let mut server = Server::new(Options::default());
    for (index, listener) in takeover.take_listeners().into_iter().enumerate() {
        let listener = Listener::from(listener);
        server = server.listener(if index == 1 {
            listener.allow_steps_change()
        } else {
            listener
        });
    }
    let server = server
        .take_over(takeover)
        .expect("the steps change allowed on the HTTPS listener");
    drop(server);
    serves_on(&mut k, &mut t, "after the allowed takeover, dropped");

    let exited = old.process.stop("TERM");
    assert!(exited.status.success(), "{exited:#?}");
    assert_eq!(
        exited
            .stderr
            .matches("upgrade socket: the taker left before it was ready")
            .count(),
        2,
        "both takers left before READY, as the old inspector saw it: {exited:#?}"
    );
    assert!(
        !exited.stderr.contains("this one drains")
            && !exited
                .stdout
                .iter()
                .any(|line| line == "handed over to the new process"),
        "the old inspector never drained: {exited:#?}"
    );
}
