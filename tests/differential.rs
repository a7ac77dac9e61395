//! HTTP/1.1 differential test, with bare hyper as the oracle.
//!
//! A generator makes HTTP/1.1 client byte streams (1 to 6 pipelined requests, written in
//! chunks cut at random places, then a half-close, a half-close part-way through, or nothing
//! when a request makes the server close) and plays each against two servers with the same
//! handler:
//!
//! - the crate: `Server::new(Options::default())` on a 127.0.0.1:0 listener;
//! - the oracle: a plain tokio accept loop serving every connection with
//!   `hyper::server::conn::http1::Builder::new().half_close(true)` and `.with_upgrades()`.
//!   `half_close(true)` is what the crate promises for a peer that shuts its write side
//!   (README: "is still answered"); hyper's default answers only a few percent of the
//!   requests followed by a FIN.
//!
//! The answers (status and body) the client reads before the connection ends must be the
//! same. A mismatch prints the case's seed (replay it with `DIFFERENTIAL_SEED=0x...`), its
//! number, its requests, writes and ending, the bytes (escaped) and both outcomes.
//!
//! `cargo test --test differential` runs 1000 generated cases (about 2 s), the same cases
//! bare hyper against itself, and fixed regression cases; `DIFFERENTIAL_CASES=100000` runs
//! that many generated cases (add `-- --nocapture` to see the summary line: cases,
//! mismatches, time; about 100 s on 2 cores). A failure lists the mismatches by class (how
//! the connection ended, and the request before the end) and the first five in full.
//!
//! What is not generated, because the crate refuses it by design (`ScreeningLayer`, the
//! limits of `Options::default()`), or because the comparison could not be made:
//! - methods other than GET and POST (the crate answers TRACE and CONNECT with 405, unknown
//!   methods with 501, `OPTIONS *` with 204; bare hyper hands them to the handler);
//! - a missing, duplicate or malformed `Host`, an absolute-form target naming another host,
//!   an authority-form target (400 from the crate): every request has `host: x`;
//! - a transfer coding other than `chunked` (501 from the crate);
//! - bodies over 128 KiB, announced or streamed (413 from the crate; bodies here are at most
//!   120 000 bytes), and heads over 32 KiB (431 from the crate);
//! - `Expect: 100-continue` (hyper answers `100 Continue` only when asked);
//! - HTTP/2 (the crate sniffs the h2c preface; bare `http1::Builder` does not speak it);
//! - HEAD (its answer has a `content-length` and no body: the parser would need the method);
//! - a stream that never makes the server close and is never half-closed: nothing would tell
//!   the reader that the answers are over (the crate would close it after 15 s idle).
//!
//! What bare hyper does, as seen here (the regression cases pin the first two):
//! - A declined upgrade (`upgrade: foo`, answered 200) does not end the connection: hyper
//!   serves the requests after it. But it keeps the upgrade pending, and when the connection
//!   ends later (`Connection: close`, HTTP/1.0, EOF) it ends it as an upgrade: the socket is
//!   handed to the (dropped) `OnUpgrade` and closed without a shutdown first. With bytes of
//!   the client's still unread, that is a reset where a connection without the upgrade ends
//!   with a FIN.
//! - FIN in the middle of a body: reading it fails, and the handler's answer (400 `body
//!   error`) is written. FIN in the middle of a head: the answers before it are written, and
//!   nothing for the partial head (no 400).
//! - A body the handler leaves unread (404): hyper reads what is left of it once, when the
//!   handler drops it; if that read does not bring all of it, hyper stops reading, answers and
//!   closes. Whether the requests after it are answered depends on how the bytes arrived.
//! - A server that closes with bytes of the client's unread in its socket resets the
//!   connection, and an answer written just before can then be lost (bytes already received
//!   stay readable: `bytes_received_before_a_reset_stay_readable`).
//!
//! The last two make bare hyper disagree with itself (the test
//! `the_oracle_agrees_with_itself`, bare hyper on both sides), so the generator keeps out of
//! them with four rules:
//! 1. an unread body is the last request, or has `connection: close` (`gen_request`);
//! 2. what follows a request that makes the server close goes in the same write as its last
//!    byte (`gen_case`);
//! 3. and is at most 1 KB, which hyper reads with that request (`gen_case`);
//! 4. an unread body comes in the write that ends its head (`gen_case`).
//!
//! Without them bare hyper disagreed with itself in 8 of 3000 cases (7 after an unread body,
//! 1 a reset after a declined upgrade); with 1 and 2, in 2 of 20 000 (resets after a declined
//! upgrade, one with 113 KB after the closing request, one with an unread body split across
//! writes); with all four, in none of 100 000.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_remote_client::{ClientInfo, Options, RequestBody, Server};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::timeout_at;

/// How long one case may take on one server before it counts as a hang.
const HANG: Duration = Duration::from_secs(10);

/// Generated cases in the default run.
const DEFAULT_CASES: u64 = 1000;

/// The seed of case 0; case `n` is generated from `case_seed(n)`.
const BASE_SEED: u64 = 0x5EED_D1FF_0000_0000;

/// Cases played at the same time (each on its own two connections).
const PARALLEL: usize = 8;

/// How many of a case's bytes a report shows (the middle of longer ones is elided: the seed
/// replays them exactly, and a replay shows them all).
const REPORT_BYTES: usize = 600;

/// The largest request body generated (the crate's limit is 128 KiB).
const BIG_BODY: usize = 120_000;

// ---------------------------------------------------------------------------------------------
// A deterministic PRNG (splitmix64): the same seed, the same case.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }
}

fn case_seed(number: u64) -> u64 {
    Rng::new(BASE_SEED.wrapping_add(number)).next()
}

// ---------------------------------------------------------------------------------------------
// The handler, the same on both sides

/// What the handler decided: an answer, or to close the connection from inside.
enum Reply {
    Answer(Response<Full<Bytes>>),
    Close,
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    Reply::Answer(response)
}

/// `GET /` → 200 `hello`; `POST /echo` → 200 with the body read back (400 `body error` if
/// reading it fails); `GET /slow?ms=N` → 200 `slow` after N ms (at most 30); `GET /close` →
/// close the connection; `upgrade` + `connection: upgrade` → 200 `declined`; anything else →
/// 404 `nope`, the body left unread.
async fn handle<B>(req: Request<B>) -> Reply
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Display,
{
    let connection_upgrade = req.headers().get_all(CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    if connection_upgrade && req.headers().contains_key(UPGRADE) {
        return answer(StatusCode::OK, "declined");
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => answer(StatusCode::OK, "hello"),
        (&Method::POST, "/echo") => match req.into_body().collect().await {
            Ok(body) => answer(StatusCode::OK, body.to_bytes()),
            Err(_) => answer(StatusCode::BAD_REQUEST, "body error"),
        },
        (&Method::GET, "/slow") => {
            let ms = req
                .uri()
                .query()
                .and_then(|query| query.strip_prefix("ms="))
                .and_then(|ms| ms.parse::<u64>().ok())
                .unwrap_or(0)
                .min(30);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer(StatusCode::OK, "slow")
        }
        (&Method::GET, "/close") => Reply::Close,
        _ => answer(StatusCode::NOT_FOUND, "nope"),
    }
}

// ---------------------------------------------------------------------------------------------
// The two servers

/// The crate's `Server` with default options. `/close` calls `ClientInfo::close` and returns
/// a 200 `closed`, which must not be written (close drops the response being answered).
async fn start_crate() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the crate's listener");
    let addr = listener.local_addr().expect("the crate's listener address");
    let service = tower::service_fn(|req: Request<RequestBody>| async move {
        let client = req
            .extensions()
            .get::<ClientInfo>()
            .cloned()
            .expect("ClientInfo inserted by the server");
        Ok::<_, Infallible>(match handle(req).await {
            Reply::Answer(response) => response,
            Reply::Close => {
                client.close();
                Response::new(Full::new(Bytes::from_static(b"closed")))
            }
        })
    });
    tokio::spawn(
        Server::new(Options::default())
            .listener(listener)
            .serve(service),
    );
    addr
}

/// Bare hyper. `/close`: the handler tells its connection's task, which drops the connection
/// at once; the handler's future never completes. hyper flushes the answer to a pipelined
/// request before it reads the next head, so answers to the requests before `/close` are out.
async fn start_oracle() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the oracle's listener");
    let addr = listener
        .local_addr()
        .expect("the oracle's listener address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve_oracle_connection(stream));
        }
    });
    addr
}

async fn serve_oracle_connection(stream: TcpStream) {
    let close = Arc::new(Notify::new());
    let signal = close.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let close = close.clone();
        async move {
            match handle(req).await {
                Reply::Answer(response) => Ok::<_, Infallible>(response),
                Reply::Close => {
                    // A permit is stored if the connection's task is not waiting yet.
                    close.notify_one();
                    std::future::pending().await
                }
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = signal.notified() => {} // drops the connection, and the socket with it
    }
}

/// Which server a case is played against, besides the oracle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Subject {
    /// The crate's `Server`.
    Crate,
    /// A second bare hyper server: the oracle against itself.
    Oracle,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Crate => "the crate",
            Subject::Oracle => "bare hyper (second run)",
        }
    }
}

#[derive(Clone, Copy)]
struct Servers {
    oracle: SocketAddr,
    subject: SocketAddr,
    kind: Subject,
}

impl Servers {
    async fn start(kind: Subject) -> Servers {
        let oracle = start_oracle().await;
        let subject = match kind {
            Subject::Crate => start_crate().await,
            Subject::Oracle => start_oracle().await,
        };
        Servers {
            oracle,
            subject,
            kind,
        }
    }

    /// Plays `case` on both servers at once, each on a fresh connection.
    async fn play(&self, case: &Case) -> (Outcome, Outcome) {
        tokio::join!(play(self.oracle, case), play(self.subject, case))
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

/// How a request body is framed.
#[derive(Clone, Debug)]
enum Framing {
    /// No `content-length`, no `transfer-encoding`: an empty body.
    Nothing,
    ContentLength,
    /// `transfer-encoding: chunked`, with these chunk sizes (the last chunk, 0, not listed).
    Chunked(Vec<usize>),
}

#[derive(Clone, Debug)]
enum Kind {
    /// `GET /`: 200 `hello`.
    Get,
    /// `GET /slow?ms=N`: 200 `slow`.
    Slow(u32),
    /// `POST /echo`: 200 with the body.
    Echo(Vec<u8>, Framing),
    /// `POST /`: 404 `nope`, the body unread.
    Unread(Vec<u8>, Framing),
    /// `upgrade: foo`, `connection: upgrade`: 200 `declined`.
    Upgrade,
    /// `GET /close`: the handler closes the connection.
    Close,
}

#[derive(Clone, Debug)]
struct Req {
    kind: Kind,
    /// HTTP/1.0 (else 1.1).
    http10: bool,
    /// `connection: keep-alive` on an HTTP/1.0 request.
    keep_alive: bool,
    /// `connection: close`.
    close: bool,
    /// How `host` is spelt (`host`, `Host`, `HOST`): cosmetic variety.
    host_name: &'static str,
    /// A `user-agent` header: cosmetic variety.
    extra_header: bool,
}

impl Req {
    fn plain(kind: Kind) -> Req {
        Req {
            kind,
            http10: false,
            keep_alive: false,
            close: false,
            host_name: "host",
            extra_header: false,
        }
    }

    /// Whether the server ends the connection after this request (and ignores what follows).
    /// Not a declined upgrade: hyper serves the requests after it.
    fn closes(&self) -> bool {
        self.closer().is_some()
    }

    /// The head and the body on the wire; the head's length.
    fn encode(&self) -> (Vec<u8>, usize) {
        let (method, target) = match &self.kind {
            Kind::Get | Kind::Upgrade => ("GET", "/".to_owned()),
            Kind::Slow(ms) => ("GET", format!("/slow?ms={ms}")),
            Kind::Echo(..) => ("POST", "/echo".to_owned()),
            Kind::Unread(..) => ("POST", "/".to_owned()),
            Kind::Close => ("GET", "/close".to_owned()),
        };
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut head = format!("{method} {target} {version}\r\n{}: x\r\n", self.host_name);
        if self.extra_header {
            head.push_str("user-agent: differential/1\r\n");
        }
        if self.close {
            head.push_str("connection: close\r\n");
        } else if self.keep_alive {
            head.push_str("connection: keep-alive\r\n");
        }
        if let Kind::Upgrade = self.kind {
            head.push_str("upgrade: foo\r\nconnection: upgrade\r\n");
        }
        let mut body = Vec::new();
        if let Kind::Echo(data, framing) | Kind::Unread(data, framing) = &self.kind {
            match framing {
                Framing::Nothing => {}
                Framing::ContentLength => {
                    let _ = write!(head, "content-length: {}\r\n", data.len());
                    body.extend_from_slice(data);
                }
                Framing::Chunked(sizes) => {
                    head.push_str("transfer-encoding: chunked\r\n");
                    let mut at = 0;
                    for &size in sizes {
                        body.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                        body.extend_from_slice(&data[at..at + size]);
                        body.extend_from_slice(b"\r\n");
                        at += size;
                    }
                    body.extend_from_slice(b"0\r\n\r\n");
                }
            }
        }
        head.push_str("\r\n");
        let head_len = head.len();
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        (bytes, head_len)
    }

    /// A short name, for reports: route, framing, size class, version, `+close`.
    fn class(&self) -> String {
        let mut name = match &self.kind {
            Kind::Get => "GET /".to_owned(),
            Kind::Slow(_) => "GET /slow".to_owned(),
            Kind::Echo(data, framing) => format!("POST /echo {}", framing_class(data, framing)),
            Kind::Unread(data, framing) => {
                format!("POST / {} unread", framing_class(data, framing))
            }
            Kind::Upgrade => "declined upgrade".to_owned(),
            Kind::Close => "GET /close".to_owned(),
        };
        if self.http10 {
            name.push_str(if self.keep_alive {
                " HTTP/1.0 keep-alive"
            } else {
                " HTTP/1.0"
            });
        }
        if self.close {
            name.push_str(" +close");
        }
        name
    }

    /// A coarser name for summaries: the route and how its body is framed.
    fn family(&self) -> &'static str {
        match &self.kind {
            Kind::Get => "GET /",
            Kind::Slow(_) => "GET /slow",
            Kind::Echo(_, Framing::Nothing) => "POST /echo without a body",
            Kind::Echo(_, Framing::ContentLength) => "POST /echo content-length",
            Kind::Echo(_, Framing::Chunked(_)) => "POST /echo chunked",
            Kind::Unread(_, Framing::Chunked(_)) => "POST / chunked (unread)",
            Kind::Unread(..) => "POST / content-length (unread)",
            Kind::Upgrade => "declined upgrade",
            Kind::Close => "GET /close",
        }
    }

    /// What makes the server close after this request, if anything.
    fn closer(&self) -> Option<&'static str> {
        if matches!(self.kind, Kind::Close) {
            Some("GET /close")
        } else if self.close {
            Some("connection: close")
        } else if self.http10 && !self.keep_alive {
            Some("HTTP/1.0")
        } else {
            None
        }
    }

    /// Sizes and times, for a report (", 5 bytes"), or nothing.
    fn kind_summary(&self) -> String {
        match &self.kind {
            Kind::Echo(data, Framing::Chunked(sizes))
            | Kind::Unread(data, Framing::Chunked(sizes)) => {
                format!(", {} bytes in chunks {sizes:?}", data.len())
            }
            Kind::Echo(data, _) | Kind::Unread(data, _) => format!(", {} bytes", data.len()),
            Kind::Slow(ms) => format!(", {ms} ms"),
            _ => String::new(),
        }
    }
}

fn framing_class(data: &[u8], framing: &Framing) -> String {
    let size = match data.len() {
        0 => "empty",
        n if n >= 10_000 => "big",
        _ => "small",
    };
    match framing {
        Framing::Nothing => "no body".to_owned(),
        Framing::ContentLength => format!("cl {size}"),
        Framing::Chunked(_) => format!("chunked {size}"),
    }
}

/// What comes before a write.
#[derive(Clone, Copy, Debug)]
enum Pause {
    None,
    Yield,
    Sleep(u64),
}

#[derive(Clone, Debug)]
struct Write {
    pause: Pause,
    range: Range<usize>,
}

/// How the client ends its side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Everything is written, the write side stays open: a request makes the server close.
    Open,
    /// Everything is written, then `shutdown()` of the write side.
    HalfClose,
    /// The first `n` bytes are written, then `shutdown()`.
    HalfCloseAt(usize),
}

struct Case {
    /// What to call it in a report: the case number and seed, or a regression's name.
    name: String,
    /// For a generated case, how to replay it.
    seed: Option<u64>,
    /// The requests (empty for hand-written bytes).
    requests: Vec<Req>,
    /// Where each request starts, and its head ends, in `bytes`.
    spans: Vec<(Range<usize>, usize)>,
    bytes: Vec<u8>,
    writes: Vec<Write>,
    ending: Ending,
}

impl Case {
    /// Hand-written bytes, written at once.
    fn fixed(name: &str, bytes: &[u8], ending: Ending) -> Case {
        let mut case = Case::empty(name, ending);
        case.bytes = bytes.to_vec();
        case.write_at_once();
        case
    }

    /// Requests, written at once.
    fn of(name: &str, requests: Vec<Req>, ending: Ending) -> Case {
        let mut case = Case::empty(name, ending);
        case.set_requests(requests);
        case.write_at_once();
        case
    }

    fn empty(name: &str, ending: Ending) -> Case {
        Case {
            name: name.to_owned(),
            seed: None,
            requests: Vec::new(),
            spans: Vec::new(),
            bytes: Vec::new(),
            writes: Vec::new(),
            ending,
        }
    }

    fn write_at_once(&mut self) {
        self.writes = vec![Write {
            pause: Pause::None,
            range: 0..self.sent(),
        }];
    }

    fn set_requests(&mut self, requests: Vec<Req>) {
        self.bytes.clear();
        self.spans.clear();
        for req in &requests {
            let (bytes, head_len) = req.encode();
            let start = self.bytes.len();
            self.bytes.extend_from_slice(&bytes);
            self.spans.push((start..self.bytes.len(), start + head_len));
        }
        self.requests = requests;
    }

    /// How many bytes are written.
    fn sent(&self) -> usize {
        match self.ending {
            Ending::HalfCloseAt(n) => n,
            Ending::Open | Ending::HalfClose => self.bytes.len(),
        }
    }

    /// Where the client stops, in words, for a report: "open after closing GET /close",
    /// "half-close mid-body of POST /echo cl small"...
    fn ending_class(&self) -> String {
        let what = match self.ending {
            Ending::Open => "open",
            Ending::HalfClose | Ending::HalfCloseAt(_) => "half-close",
        };
        let sent = self.sent();
        if self.requests.is_empty() {
            return format!("{what} after {sent} bytes");
        }
        // Where the bytes sent end, or the first request that makes the server close, if it
        // was sent whole: what follows it does not matter.
        for (req, (span, head_end)) in self.requests.iter().zip(&self.spans) {
            if sent < span.end {
                let part = if sent == span.start {
                    "before"
                } else if sent < *head_end {
                    "mid-head of"
                } else {
                    "mid-body of"
                };
                return format!("{what} {part} {}", req.class());
            }
            if req.closes() {
                let more = if span.end < sent {
                    " (+ more bytes)"
                } else {
                    ""
                };
                return format!("{what} after closing {}{more}", req.class());
            }
        }
        let last = &self.requests[self.requests.len() - 1];
        format!("{what} after {}", last.class())
    }

    /// The class of the case in summaries, coarser than [`Case::ending_class`]: how the
    /// connection ends, and the request before the end.
    fn summary_class(&self) -> String {
        let sent = self.sent();
        let mut last: Option<&Req> = None;
        for (req, (span, head_end)) in self.requests.iter().zip(&self.spans) {
            if sent < span.end {
                if sent == span.start {
                    break;
                }
                let part = if sent < *head_end { "head" } else { "body" };
                return format!("half-close mid-{part} of {}", req.family());
            }
            if let Some(closer) = req.closer() {
                let more = if span.end < sent {
                    ", more bytes after it"
                } else {
                    ""
                };
                let ending = match self.ending {
                    Ending::Open => "",
                    _ => ", then half-close",
                };
                let body = match &req.kind {
                    Kind::Echo(_, Framing::Nothing) => "",
                    Kind::Echo(..) | Kind::Unread(..) => " with a body",
                    _ => "",
                };
                let before = match last {
                    Some(_) => "after pipelined requests",
                    None => "first",
                };
                return format!("server closes ({closer}{body}) {before}{more}{ending}");
            }
            last = Some(req);
        }
        match last {
            None if self.requests.is_empty() => format!("{:?}", self.ending),
            None => "half-close before any byte".to_owned(),
            Some(req) => format!("half-close after {}", req.family()),
        }
    }

    /// The case in full, for a report; the bytes escaped, their middle elided past `keep`.
    fn describe(&self, keep: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "case {}", self.name);
        if let Some(seed) = self.seed {
            let _ = writeln!(out, "  replay: DIFFERENTIAL_SEED={seed:#018x}");
        }
        for (k, (req, (span, _))) in self.requests.iter().zip(&self.spans).enumerate() {
            let _ = writeln!(
                out,
                "  #{k} bytes {}..{}: {}{}",
                span.start,
                span.end,
                req.class(),
                req.kind_summary()
            );
        }
        let writes: Vec<String> = self
            .writes
            .iter()
            .map(|w| match w.pause {
                Pause::None => format!("{}..{}", w.range.start, w.range.end),
                Pause::Yield => format!("yield {}..{}", w.range.start, w.range.end),
                Pause::Sleep(ms) => format!("sleep {ms} ms {}..{}", w.range.start, w.range.end),
            })
            .collect();
        let _ = writeln!(out, "  writes: [{}]", writes.join(", "));
        let _ = writeln!(out, "  ending: {:?} ({})", self.ending, self.ending_class());
        let _ = writeln!(
            out,
            "  bytes ({} of {} sent): \"{}\"",
            self.sent(),
            self.bytes.len(),
            escape(&self.bytes, keep)
        );
        out
    }
}

/// `bytes` escaped; a long run elided in the middle (the seed replays it exactly).
fn escape(bytes: &[u8], keep: usize) -> String {
    if bytes.len() <= keep {
        return bytes.escape_ascii().to_string();
    }
    let half = keep / 2;
    format!(
        "{}<... {} bytes ...>{}",
        bytes[..half].escape_ascii(),
        bytes.len() - 2 * half,
        bytes[bytes.len() - half..].escape_ascii()
    )
}

// ---------------------------------------------------------------------------------------------
// The generator

fn body(rng: &mut Rng, big: &mut bool) -> Vec<u8> {
    let len = match rng.range(0, 99) {
        0..=19 => 0,
        20..=95 => rng.range(1, 200),
        _ if !*big => {
            // At most one big body per case: each costs a few ms on each side.
            *big = true;
            rng.range(BIG_BODY - 20_000, BIG_BODY)
        }
        _ => rng.range(1, 2000),
    };
    let seed = rng.next();
    (0..len)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[(seed as usize + i * 7) % 36])
        .collect()
}

fn chunk_sizes(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = len;
    while left > 0 {
        let size = if rng.percent(30) {
            left
        } else {
            rng.range(1, left.min(if len > 10_000 { 40_000 } else { 64 }))
        };
        sizes.push(size);
        left -= size;
    }
    sizes
}

/// One request. HTTP/1.0 requests carry no chunked body and no upgrade (hyper considers
/// `upgrade` only on HTTP/1.1).
fn gen_request(rng: &mut Rng, big: &mut bool, last: bool) -> Req {
    let kind = match rng.range(0, 99) {
        0..=19 => Kind::Get,
        20..=31 => Kind::Slow(rng.range(0, 30) as u32),
        32..=51 => {
            let data = body(rng, big);
            let framing = match rng.range(0, 9) {
                0 if data.is_empty() => Framing::Nothing,
                0..=5 => Framing::ContentLength,
                _ => Framing::Chunked(chunk_sizes(rng, data.len())),
            };
            Kind::Echo(data, framing)
        }
        52..=65 => {
            let data = body(rng, big);
            let framing = if rng.percent(60) {
                Framing::ContentLength
            } else {
                Framing::Chunked(chunk_sizes(rng, data.len()))
            };
            Kind::Unread(data, framing)
        }
        66..=77 => Kind::Upgrade,
        78..=87 => Kind::Close,
        // An HTTP/1.0 request: below.
        _ => {
            if rng.percent(50) {
                Kind::Get
            } else {
                let data = body(rng, big);
                Kind::Echo(data, Framing::ContentLength)
            }
        }
    };
    let http10 = !matches!(kind, Kind::Upgrade)
        && !matches!(
            kind,
            Kind::Echo(_, Framing::Chunked(_)) | Kind::Unread(_, Framing::Chunked(_))
        )
        && rng.percent(12);
    let keep_alive = http10 && rng.percent(30);
    let close = !keep_alive && !matches!(kind, Kind::Upgrade | Kind::Close) && rng.percent(10);
    let mut req = Req {
        kind,
        http10,
        keep_alive,
        close,
        host_name: rng.pick(&["host", "Host", "HOST"]),
        extra_header: rng.percent(20),
    };
    // Rule 1 (module doc): an unread body followed by more requests. hyper reads what is
    // left of the body once, when the handler has dropped it; if that read does not bring
    // all of it, hyper stops reading, answers the 404 and closes. Whether the next requests
    // are answered then depends on how the bytes arrived, and bare hyper disagrees with
    // itself; so an unread body only ends a connection: it is the last request, or it
    // closes the connection itself.
    if matches!(req.kind, Kind::Unread(..)) && !last && !req.closes() {
        req.close = true;
    }
    req
}

/// A case from its seed; `name` says where it comes from ("#17" for case 17 of a run).
fn gen_case(name: &str, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let count = rng.range(1, 6);
    let mut big = false;
    let mut requests: Vec<Req> = (0..count)
        .map(|k| gen_request(&mut rng, &mut big, k + 1 == count))
        .collect();
    // Rule 3 (module doc): after a request that makes the server close, at most 1 KB more,
    // which hyper reads with that request: the server does not close with bytes unread.
    if let Some(first) = requests.iter().position(Req::closes) {
        let mut extra = 0;
        let keep = requests[first + 1..]
            .iter()
            .take_while(|req| {
                extra += req.encode().0.len();
                extra <= 1024
            })
            .count();
        requests.truncate(first + 1 + keep);
    }
    let mut case = Case::empty(&format!("{name} (seed {seed:#018x})"), Ending::HalfClose);
    case.seed = Some(seed);
    case.set_requests(requests);
    let len = case.bytes.len();

    // The ending. A stream without a request that makes the server close is always
    // half-closed: else nobody would end the connection.
    let closing = case.requests.iter().any(Req::closes);
    case.ending = match rng.range(0, 9) {
        0..=3 if closing => Ending::Open,
        0..=5 => Ending::HalfClose,
        _ => Ending::HalfCloseAt(rng.range(0, len)),
    };
    let sent = case.sent();

    // The writes: at once, at a few random places, or in many small pieces.
    let mut cuts: Vec<usize> = match rng.range(0, 9) {
        0..=3 => Vec::new(),
        4..=7 => (0..rng.range(1, 8))
            .map(|_| rng.range(1, sent.max(1)))
            .collect(),
        _ if sent <= 4096 => {
            let mut cuts = Vec::new();
            let mut at = 0;
            loop {
                at += rng.range(1, 24);
                if at >= sent {
                    break cuts;
                }
                cuts.push(at);
            }
        }
        _ => (0..rng.range(8, 30)).map(|_| rng.range(1, sent)).collect(),
    };
    // Rule 2 (module doc): what follows a request that makes the server close goes in the
    // same write as its last byte, so it is not left unread in the socket when the server
    // closes.
    let closing_end = case
        .requests
        .iter()
        .zip(&case.spans)
        .find(|(req, _)| req.closes())
        .map_or(usize::MAX, |(_, (span, _))| span.end);
    // Rule 4 (module doc): an unread body comes with the write that ends its head, so the
    // one read hyper makes of it, when the handler drops it, brings all of it (small ones).
    let unread: Vec<Range<usize>> = case
        .requests
        .iter()
        .zip(&case.spans)
        .filter(|(req, _)| matches!(req.kind, Kind::Unread(..)))
        .map(|(_, (span, head_end))| *head_end..span.end)
        .collect();
    cuts.retain(|&cut| {
        cut > 0 && cut < sent && cut < closing_end && !unread.iter().any(|body| body.contains(&cut))
    });
    cuts.push(sent);
    cuts.sort_unstable();
    cuts.dedup();
    let mut start = 0;
    case.writes = cuts
        .into_iter()
        .map(|end| {
            let pause = if start == 0 {
                Pause::None
            } else {
                match rng.range(0, 3) {
                    0 | 1 => Pause::None,
                    2 => Pause::Yield,
                    _ => Pause::Sleep(rng.range(0, 2) as u64),
                }
            };
            let write = Write {
                pause,
                range: start..end,
            };
            start = end;
            write
        })
        .collect();
    case
}

// ---------------------------------------------------------------------------------------------
// The client

/// How the connection ended for the reader.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Eof,
    /// A read error (a reset, mostly); what came before it is kept.
    Error(std::io::ErrorKind),
    /// Nothing ended it within [`HANG`].
    Hang,
    /// The connection could not be made.
    Connect(String),
}

/// One answer: its status and body.
#[derive(Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.body.len() <= 64 {
            write!(f, "{} \"{}\"", self.status, self.body.escape_ascii())
        } else {
            write!(
                f,
                "{} ({} bytes: \"{}\"...)",
                self.status,
                self.body.len(),
                self.body[..32].escape_ascii()
            )
        }
    }
}

/// What the client read: the answers, the bytes after the last complete one, how it ended.
#[derive(Clone, Debug)]
struct Outcome {
    answers: Vec<Answer>,
    /// Bytes read after the last complete answer (an answer cut short, or garbage).
    partial: Vec<u8>,
    end: End,
}

impl Outcome {
    /// What is compared: the answers, the leftover, and whether it hung (EOF against a reset
    /// is not compared: which one a close makes depends on unread bytes, i.e. on timing).
    fn same(&self, other: &Outcome) -> bool {
        self.answers == other.answers
            && self.partial == other.partial
            && (self.end == End::Hang) == (other.end == End::Hang)
            && matches!(self.end, End::Connect(_)) == matches!(other.end, End::Connect(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.answers)?;
        if !self.partial.is_empty() {
            write!(
                f,
                " + {} bytes not a complete answer: \"{}\"",
                self.partial.len(),
                escape(&self.partial, 200)
            )?;
        }
        write!(f, ", then {:?}", self.end)
    }
}

/// Plays `case` on a fresh connection to `addr`: the writes (with their pauses) and, at the
/// same time, reads until EOF, a read error or [`HANG`].
async fn play(addr: SocketAddr, case: &Case) -> Outcome {
    let deadline = tokio::time::Instant::now() + HANG;
    let mut stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return outcome(Vec::new(), End::Connect(error.to_string())),
        Err(_) => return outcome(Vec::new(), End::Connect("connect timed out".into())),
    };
    // Small writes go out as they are, not merged by Nagle.
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let writer = async {
        for write in &case.writes {
            match write.pause {
                Pause::None => {}
                Pause::Yield => tokio::task::yield_now().await,
                Pause::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
            match timeout_at(deadline, wr.write_all(&case.bytes[write.range.clone()])).await {
                Ok(Ok(())) => {}
                // The server has closed (or reset) the connection, or never reads: stop.
                Ok(Err(_)) | Err(_) => return,
            }
        }
        if case.ending != Ending::Open {
            let _ = wr.shutdown().await;
        }
        // `Open`: the write half is borrowed, so nothing shuts it down until the stream is
        // dropped, after the reader is done.
    };
    let reader = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            match timeout_at(deadline, rd.read(&mut buf)).await {
                Ok(Ok(0)) => break End::Eof,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(error)) => break End::Error(error.kind()),
                Err(_) => break End::Hang,
            }
        };
        (got, end)
    };
    let ((), (got, end)) = tokio::join!(writer, reader);
    outcome(got, end)
}

fn outcome(bytes: Vec<u8>, end: End) -> Outcome {
    let mut answers = Vec::new();
    let mut at = 0;
    while let Some((answer, used)) = parse_answer(&bytes[at..]) {
        answers.push(answer);
        at += used;
    }
    Outcome {
        answers,
        partial: bytes[at..].to_vec(),
        end,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One complete answer from the front of `bytes` and the bytes it took: `content-length`
/// and chunked bodies, or (neither) a body to the end of what was read.
fn parse_answer(bytes: &[u8]) -> Option<(Answer, usize)> {
    let head_end = find(bytes, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &bytes[head_end..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((
            Answer {
                status,
                body: Vec::new(),
            },
            head_end,
        ));
    }
    if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = at + find(&rest[at..], b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[at..line_end]).ok()?;
            let size_text = size_text.split(';').next()?.trim();
            let size = usize::from_str_radix(size_text, 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailers (none expected), up to an empty line.
                let end = at + find(&rest[at..], b"\r\n")? + 2;
                if end - at > 2 {
                    let trailers_end = at + find(&rest[at..], b"\r\n\r\n")? + 4;
                    return Some((Answer { status, body }, head_end + trailers_end));
                }
                return Some((Answer { status, body }, head_end + end));
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    match length {
        Some(length) if rest.len() >= length => Some((
            Answer {
                status,
                body: rest[..length].to_vec(),
            },
            head_end + length,
        )),
        Some(_) => None,
        None => Some((
            Answer {
                status,
                body: rest.to_vec(),
            },
            bytes.len(),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Running cases

struct Mismatch {
    class: String,
    report: String,
}

fn mismatch(servers: &Servers, case: &Case, oracle: &Outcome, subject: &Outcome) -> Mismatch {
    let (got, want) = (subject.answers.len(), oracle.answers.len());
    let difference = if oracle.end == End::Hang {
        "bare hyper hung".to_owned()
    } else if subject.end == End::Hang {
        format!("{} hung", servers.kind.name())
    } else if got < want && oracle.answers.starts_with(&subject.answers) {
        "fewer answers".to_owned()
    } else if got > want && subject.answers.starts_with(&oracle.answers) {
        "more answers".to_owned()
    } else if subject.answers == oracle.answers {
        "different leftover bytes".to_owned()
    } else {
        "different answers".to_owned()
    };
    let class = format!("{difference}: {}", case.summary_class());
    let report = format!(
        "{}: {difference} ({got} answers, bare hyper {want})\n{}  bare hyper: {oracle}\n  {}: {subject}\n",
        servers.kind.name(),
        case.describe(REPORT_BYTES),
        servers.kind.name()
    );
    Mismatch { class, report }
}

/// Plays `case` once; a mismatch if the outcomes differ.
async fn check(servers: Servers, case: &Case) -> Option<Mismatch> {
    let (oracle, subject) = servers.play(case).await;
    if oracle.same(&subject) && oracle.end != End::Hang {
        None
    } else {
        Some(mismatch(&servers, case, &oracle, &subject))
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?}: not a number")))
}

/// Plays the generated cases (or the one `DIFFERENTIAL_SEED` names) against `subject`, and
/// fails with a summary and the first mismatches.
async fn run_generated(subject: Subject) {
    let servers = Servers::start(subject).await;
    if let Some(seed) = env_number("DIFFERENTIAL_SEED") {
        let case = gen_case("replayed", seed);
        let (oracle, other) = servers.play(&case).await;
        // The bytes in full this time.
        let report = format!(
            "{}  bare hyper: {oracle}\n  {}: {other}",
            case.describe(usize::MAX),
            subject.name()
        );
        assert!(
            oracle.same(&other) && oracle.end != End::Hang,
            "{}\n{report}",
            mismatch(&servers, &case, &oracle, &other).class
        );
        eprintln!("{report}");
        return;
    }

    let cases = env_number("DIFFERENTIAL_CASES").unwrap_or(DEFAULT_CASES);
    let started = Instant::now();
    let mut running = JoinSet::new();
    let mut mismatches = Vec::new();
    let mut next = 0;
    while next < cases || !running.is_empty() {
        while next < cases && running.len() < PARALLEL {
            let number = next;
            running.spawn(async move {
                let case = gen_case(&format!("#{number}"), case_seed(number));
                (number, check(servers, &case).await)
            });
            next += 1;
        }
        if let Some(done) = running.join_next().await {
            let (number, result) = done.expect("a case's task panicked");
            if let Some(found) = result {
                mismatches.push((number, found));
            }
        }
    }
    mismatches.sort_by_key(|(number, _)| *number);

    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, found) in &mismatches {
        *classes.entry(&found.class).or_default() += 1;
    }
    let mut summary = format!(
        "differential ({} vs bare hyper): {cases} cases, {} mismatches, {:.1} s",
        subject.name(),
        mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{summary}");
    if mismatches.is_empty() {
        return;
    }
    for (class, count) in &classes {
        let _ = write!(summary, "\n  {count:5} × {class}");
    }
    summary.push_str("\n\nthe first mismatches:\n");
    for (_, found) in mismatches.iter().take(5) {
        summary.push('\n');
        summary.push_str(&found.report);
    }
    panic!("{summary}");
}

/// Plays `case` `tries` times; each time bare hyper must answer `expected` (so the case says
/// what it claims) and the subject the same as bare hyper.
async fn agree(case: Case, tries: usize, expected: &[(u16, &str)]) {
    let servers = Servers::start(Subject::Crate).await;
    let expected: Vec<Answer> = expected
        .iter()
        .map(|&(status, body)| Answer {
            status,
            body: body.as_bytes().to_vec(),
        })
        .collect();
    let mut failures = Vec::new();
    for _ in 0..tries {
        let (oracle, subject) = servers.play(&case).await;
        assert_eq!(
            oracle.answers,
            expected,
            "bare hyper no longer answers this case as expected\n{}  bare hyper: {oracle}",
            case.describe(REPORT_BYTES)
        );
        if !oracle.same(&subject) {
            failures.push(mismatch(&servers, &case, &oracle, &subject));
        }
    }
    if let Some(first) = failures.first() {
        panic!(
            "{} of {tries} tries differ from bare hyper; the first:\n{}",
            failures.len(),
            first.report
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

/// The generated cases, against the crate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_streams_are_answered_as_bare_hyper_answers_them() {
    run_generated(Subject::Crate).await;
}

/// The same cases, bare hyper against itself: a case whose answers depend on timing in hyper
/// itself would show here, and must be kept out of the generator (or compared otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_agrees_with_itself() {
    run_generated(Subject::Oracle).await;
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
const CLOSE: &[u8] = b"GET /close HTTP/1.1\r\nhost: x\r\n\r\n";
const UPGRADE_FOO: &[u8] =
    b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: foo\r\nconnection: upgrade\r\n\r\n";
const GET_CONNECTION_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
const GET_HTTP10: &[u8] = b"GET / HTTP/1.0\r\nhost: x\r\n\r\n";

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Bug 1: the answer to a request pipelined before `/close` is lost (the crate wrote nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_pipelined_answer_before_close_is_written() {
    let case = Case::fixed(
        "GET / then GET /close, one write",
        &cat(&[GET, CLOSE]),
        Ending::Open,
    );
    agree(case, 20, &[(200, "hello")]).await;
}

/// Bug 1: a declined upgrade, then a `Connection: close` request and one more byte, in one
/// write: bare hyper answers both (it keeps the connection after a declined upgrade until a
/// request closes it); the crate answered neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_declined_upgrade_then_connection_close() {
    let case = Case::fixed(
        "declined upgrade, GET / connection: close, one more byte",
        &cat(&[UPGRADE_FOO, GET_CONNECTION_CLOSE, b"x"]),
        Ending::Open,
    );
    agree(case, 20, &[(200, "declined"), (200, "hello")]).await;
}

/// Bug 1: the same with an HTTP/1.0 request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_declined_upgrade_then_http10() {
    let case = Case::fixed(
        "declined upgrade, GET / HTTP/1.0, one more byte",
        &cat(&[UPGRADE_FOO, GET_HTTP10, b"x"]),
        Ending::Open,
    );
    agree(case, 20, &[(200, "declined"), (200, "hello")]).await;
}

/// Bug 2: a half-close right after a request with a body lost the answer in some tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_half_close_after_content_length_echo() {
    let case = Case::fixed(
        "POST /echo content-length 5, then half-close",
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
        Ending::HalfClose,
    );
    agree(case, 50, &[(200, "hello")]).await;
}

/// Bug 2, with a chunked body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_half_close_after_chunked_echo() {
    let case = Case::fixed(
        "POST /echo chunked, then half-close",
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
          2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
        Ending::HalfClose,
    );
    agree(case, 50, &[(200, "hello")]).await;
}

/// Bug 2, with a 120 KB body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_half_close_after_big_echo() {
    let data = "0123456789".repeat(BIG_BODY / 10);
    let req = Req::plain(Kind::Echo(
        data.clone().into_bytes(),
        Framing::ContentLength,
    ));
    let case = Case::of(
        "POST /echo 120 KB, then half-close",
        vec![req],
        Ending::HalfClose,
    );
    agree(case, 20, &[(200, &data)]).await;
}

/// Bug 2, with a body the handler leaves unread (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_half_close_after_unread_body() {
    let case = Case::fixed(
        "POST / content-length 5 (404, unread), then half-close",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
        Ending::HalfClose,
    );
    agree(case, 50, &[(404, "nope")]).await;
}

/// The harness keeps what it read before a reset: on Linux loopback, bytes received before
/// an RST stay readable, and the reset is reported after them. Checked, not assumed: a
/// server that closes with unread bytes resets the connection, and both servers do that
/// here (bytes after `/close`, after a request that closes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_received_before_a_reset_stay_readable() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a listener");
    let addr = listener.local_addr().expect("the listener's address");
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        stream.write_all(b"answer").await.expect("write the answer");
        // Wait until the client's bytes are here, and close without reading them: an RST.
        let mut peek = [0u8; 1];
        stream.peek(&mut peek).await.expect("peek");
        drop(stream);
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(b"unread").await.expect("write");
    server.await.expect("the server task");
    // Give the RST time to arrive before anything is read.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut buf = [0u8; 64];
    let n = client
        .read(&mut buf)
        .await
        .expect("the bytes sent before the reset");
    assert_eq!(&buf[..n], b"answer");
    let after = client.read(&mut buf).await;
    assert_eq!(
        after.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "then the reset"
    );
}
