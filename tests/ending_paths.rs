//! The ending paths of a connection: however a connection ends (a handler's `close()`, the
//! registry's `close(id)`, a declined upgrade, `Connection: close`, the peer's half-close or its
//! disappearance, a clock), every answer that was produced for it before the end is written,
//! nothing is written for what came after, and the close is reported once everything it
//! implies has happened (`closed()` resolves after the `on_close` callbacks ran). Also: the
//! clocks that end a connection are armed whenever it becomes idle (HTTP/2), the options of the
//! client (not the driver's) rule its connection, and an HTTP/2 connection's answers that the
//! peer does not take are bounded.
//!
//! Every test runs a real server (`Server`, or `RemoteClient` in an accept loop) on
//! 127.0.0.1:0 and talks to it over real sockets: raw TCP writing exact bytes for HTTP/1,
//! hyper's client for HTTP/2. Races are repeated on fresh connections, and every wait is
//! bounded.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{parse_response, within, RawResponse};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_remote_client::{
    driver::DefaultHttpDriverFactory,
    layer::{Handler, HandlerBody},
    ClientInfo, CloseReason, Options, RemoteClient, RequestBody, Server, ServerHandle, Status,
    TimeoutKind,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// The server under test

/// What the handler reports to the test, and what the test hands to the handler.
#[derive(Clone)]
struct Ctx {
    /// `/hold`: the handler started (with its client).
    entered: mpsc::UnboundedSender<ClientInfo>,
    /// `/hold` waits on this.
    release: Arc<Notify>,
}

fn ctx() -> (Ctx, mpsc::UnboundedReceiver<ClientInfo>) {
    let (entered, entered_rx) = mpsc::unbounded_channel();
    let ctx = Ctx {
        entered,
        release: Arc::new(Notify::new()),
    };
    (ctx, entered_rx)
}

fn full(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::new(Full::new(body.into()))
}

fn with_status(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = full(body);
    *response.status_mut() = code;
    response
}

/// The routes:
/// - `/`: 200 "ok" (also for a request that asks for an upgrade: it is declined).
/// - `/echo`: the request body back (400 if it cannot be read).
/// - `/close`: the handler calls `ClientInfo::close()`, then answers 200 "closed" (which must
///   never reach the peer).
/// - `/hold`: reports entry, waits for `release`, then 200 "held".
/// - `/late`: 200 "late" after 100 ms.
/// - anything else: 404 "not here", without reading the body.
async fn routes(req: Request<RequestBody>, ctx: Ctx) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = req
        .extensions()
        .get::<ClientInfo>()
        .expect("ClientInfo inserted by the server")
        .clone();
    Ok(match req.uri().path() {
        "/" => full("ok"),
        "/echo" => match req.into_body().collect().await {
            Ok(body) => full(body.to_bytes()),
            Err(_) => with_status(StatusCode::BAD_REQUEST, "unreadable body"),
        },
        "/close" => {
            client.close();
            full("closed")
        }
        "/hold" => {
            let _ = ctx.entered.send(client);
            ctx.release.notified().await;
            full("held")
        }
        "/late" => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            full("late")
        }
        _ => with_status(StatusCode::NOT_FOUND, "not here"),
    })
}

fn routes_service(ctx: Ctx) -> impl Handler<Full<Bytes>> {
    tower::service_fn(move |req| routes(req, ctx.clone()))
}

/// A `Server` on 127.0.0.1:0; aborted when dropped.
struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    serving: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

async fn start<S, B>(options: Options, service: S) -> Running
where
    S: Handler<B>,
    B: HandlerBody,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let server = Server::new(options).listener(listener);
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(service));
    Running {
        addr,
        handle,
        serving,
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1 helpers

/// How the server ended a connection, as its peer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Eof,
    /// A read failed (a reset; over TLS also an EOF without close_notify).
    Failed(std::io::ErrorKind),
}

/// Everything the server wrote until it ended the connection, and how it ended it.
async fn read_until_end<S: AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = within("the server ends the connection", async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return End::Eof,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(error) => return End::Failed(error.kind()),
            }
        }
    })
    .await;
    (out, end)
}

/// The complete responses at the front of `bytes`, and how many bytes are left after them.
fn parse_all(bytes: &[u8]) -> (Vec<RawResponse>, usize) {
    let mut responses = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match parse_response(&bytes[at..]) {
            Some((response, used)) => {
                responses.push(response);
                at += used;
            }
            None => break,
        }
    }
    (responses, bytes.len() - at)
}

/// What a connection's peer received, parsed.
#[derive(Debug)]
struct Received {
    responses: Vec<RawResponse>,
    /// Bytes after the last complete response (a partial one).
    left: usize,
    end: End,
}

impl Received {
    fn of(bytes: &[u8], end: End) -> Received {
        let (responses, left) = parse_all(bytes);
        Received {
            responses,
            left,
            end,
        }
    }

    /// Exactly one complete response, `status` with `body`, and nothing after it.
    fn is_one(&self, status: u16, body: &[u8]) -> bool {
        self.left == 0
            && self.responses.len() == 1
            && self.responses[0].status == status
            && self.responses[0].body == body
    }

    /// A short description for failure messages.
    fn summary(&self) -> String {
        let statuses: Vec<u16> = self.responses.iter().map(|r| r.status).collect();
        format!(
            "{} response(s) {statuses:?}, {} byte(s) left over, then {:?}",
            self.responses.len(),
            self.left,
            self.end
        )
    }
}

/// Connects, writes `bytes` in one write, and reads what the server writes until it ends the
/// connection.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Received {
    let mut stream = common::connect(addr).await;
    within("write the requests", stream.write_all(bytes))
        .await
        .expect("write the requests");
    let (bytes, end) = read_until_end(&mut stream).await;
    Received::of(&bytes, end)
}

/// Connects, writes `bytes`, shuts the write side down (the server reads EOF after them), and
/// reads what the server writes until it ends the connection.
async fn exchange_half_closed(addr: SocketAddr, bytes: &[u8]) -> Received {
    let mut stream = common::connect(addr).await;
    within("write the request", stream.write_all(bytes))
        .await
        .expect("write the request");
    within("shut the write side", stream.shutdown())
        .await
        .expect("shut the write side");
    let (bytes, end) = read_until_end(&mut stream).await;
    Received::of(&bytes, end)
}

/// The outcomes of the rounds of a repeated race: fails, once all have run, with how many went
/// wrong and the first few outcomes of those.
struct Tally {
    what: String,
    rounds: usize,
    bad: Vec<String>,
}

impl Tally {
    fn new(what: &str, rounds: usize) -> Tally {
        Tally {
            what: what.to_owned(),
            rounds,
            bad: Vec::new(),
        }
    }

    fn record(&mut self, round: usize, outcome: Result<(), String>) {
        if let Err(outcome) = outcome {
            self.bad.push(format!("round {round}: {outcome}"));
        }
    }

    /// What went wrong, if anything.
    fn failure(&self) -> Option<String> {
        (!self.bad.is_empty()).then(|| {
            format!(
                "{}: {}/{} rounds right; the first wrong ones: {:#?}",
                self.what,
                self.rounds - self.bad.len(),
                self.rounds,
                &self.bad[..self.bad.len().min(5)]
            )
        })
    }

    fn assert_all_right(&self) {
        assert_all_right(std::slice::from_ref(self));
    }
}

/// Fails with what went wrong in every variant of a test that went wrong.
fn assert_all_right(tallies: &[Tally]) {
    let failures: Vec<String> = tallies.iter().filter_map(Tally::failure).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 1. A handler's close() behind a pipelined request: the earlier answer is written

const GET_THEN_CLOSE: &[u8] =
    b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET /close HTTP/1.1\r\nhost: x\r\n\r\n";

const ECHO_THEN_CLOSE: &[u8] = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
GET /close HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_answer_before_handler_close_is_written() {
    let (ctx, _entered) = ctx();
    let server = start(Options::default(), routes_service(ctx)).await;
    let mut tallies = Vec::new();
    for (what, bytes, body) in [
        ("GET / then GET /close", GET_THEN_CLOSE, &b"ok"[..]),
        ("POST /echo then GET /close", ECHO_THEN_CLOSE, &b"hello"[..]),
    ] {
        let mut tally = Tally::new(what, 20);
        for round in 0..20 {
            let outcome: Result<(), String> = async {
                let received = exchange(server.addr, bytes).await;
                // The first answer, whole; nothing for /close (its handler closed the connection
                // before answering); then the end (EOF or reset: both are the end).
                if received.is_one(200, body) {
                    Ok(())
                } else {
                    Err(received.summary())
                }
            }
            .await;
            tally.record(round, outcome);
        }
        tallies.push(tally);
    }
    assert_all_right(&tallies);
}

// ---------------------------------------------------------------------------------------------
// 2. The registry's close(id) while a pipelined request is in its handler

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_answers_before_admin_close_are_written() {
    let (ctx, mut entered) = ctx();
    let server = start(Options::default(), routes_service(ctx)).await;
    let mut tally = Tally::new("GET / then GET /hold, closed from outside", 20);
    for round in 0..20 {
        let outcome: Result<(), String> = async {
            let mut stream = common::connect(server.addr).await;
            within(
                "write the requests",
                stream.write_all(
                    b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET /hold HTTP/1.1\r\nhost: x\r\n\r\n",
                ),
            )
            .await
            .expect("write the requests");
            let client = within("/hold entered", entered.recv())
                .await
                .expect("the handler's channel is open");
            if !server.handle.close(client.id()) {
                return Err("the registry did not know the client".into());
            }
            let (bytes, end) = read_until_end(&mut stream).await;
            let received = Received::of(&bytes, end);
            // GET /'s answer was produced before the close: it is on the wire. /hold's is not.
            if received.is_one(200, b"ok") {
                Ok(())
            } else {
                Err(received.summary())
            }
        }
        .await;
        tally.record(round, outcome);
    }
    tally.assert_all_right();
}

// ---------------------------------------------------------------------------------------------
// 3. A declined upgrade followed by a request that ends the connection: answered as bare hyper
// answers it (both requests, as measured with hyper 1.x; the trailing byte is left unread)

/// A plain accept loop of bare hyper (`http1::Builder` with upgrades), answering every request
/// with 200 "ok" as [`routes`] answers `/`.
async fn bare_hyper() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(full("ok"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, accept)
}

const DECLINED_THEN_CLOSE: &[u8] =
    b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: foo\r\nconnection: upgrade\r\n\r\n\
GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nX";

const DECLINED_THEN_HTTP10: &[u8] =
    b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: foo\r\nconnection: upgrade\r\n\r\n\
GET / HTTP/1.0\r\nhost: x\r\n\r\nX";

/// The statuses of the complete answers to `bytes`, and how many bytes were left over.
async fn answers(addr: SocketAddr, bytes: &[u8]) -> (Vec<u16>, usize) {
    let received = exchange(addr, bytes).await;
    let statuses = received.responses.iter().map(|r| r.status).collect();
    (statuses, received.left)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_upgrade_then_connection_close_answers_both() {
    let (hyper_addr, hyper_accept) = bare_hyper().await;
    let (ctx, _entered) = ctx();
    let server = start(Options::default(), routes_service(ctx)).await;
    for (what, bytes) in [
        ("then Connection: close", DECLINED_THEN_CLOSE),
        ("then HTTP/1.0", DECLINED_THEN_HTTP10),
    ] {
        let (by_hyper, left) = answers(hyper_addr, bytes).await;
        assert!(
            !by_hyper.is_empty() && by_hyper.iter().all(|&s| s == 200) && left == 0,
            "bare hyper, a declined upgrade {what}: {by_hyper:?}, {left} byte(s) left over"
        );
        for round in 0..10 {
            let (by_crate, left) = answers(server.addr, bytes).await;
            assert_eq!(
                (by_crate, left),
                (by_hyper.clone(), 0),
                "a declined upgrade {what}, round {round}: the crate's answers (left), \
                 bare hyper's (right)"
            );
        }
    }
    hyper_accept.abort();
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_upgrade_then_connection_close_over_tls_answers_both() {
    use hyper_remote_client::Listener;

    let (hyper_addr, hyper_accept) = bare_hyper().await;
    // What hyper answers does not depend on the transport: its answers over plain TCP.
    let (by_hyper, _) = answers(hyper_addr, DECLINED_THEN_CLOSE).await;
    hyper_accept.abort();
    assert!(!by_hyper.is_empty(), "bare hyper answered nothing");

    let (acceptor, connector) = common::tls::self_signed();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let (ctx, _entered) = ctx();
    let server =
        Server::new(Options::default()).listener(Listener::tcp(listener).with_tls(acceptor));
    let serving = tokio::spawn(server.serve(routes_service(ctx)));
    for round in 0..10 {
        let tcp = common::connect(addr).await;
        let mut tls = within(
            "TLS handshake",
            connector.connect(common::tls::localhost(), tcp),
        )
        .await
        .expect("TLS handshake");
        within("write the requests", tls.write_all(DECLINED_THEN_CLOSE))
            .await
            .expect("write the requests");
        within("flush the requests", tls.flush())
            .await
            .expect("flush the requests");
        let (bytes, end) = read_until_end(&mut tls).await;
        let received = Received::of(&bytes, end);
        let by_crate: Vec<u16> = received.responses.iter().map(|r| r.status).collect();
        assert_eq!(
            (by_crate, received.left),
            (by_hyper.clone(), 0),
            "over TLS, round {round}: the crate's answers (left), bare hyper's (right); {}",
            received.summary()
        );
    }
    serving.abort();
}

// ---------------------------------------------------------------------------------------------
// 4. A complete request, then the peer's half-close: answered, then EOF

/// A request sent whole before the peer's half-close, and the one answer it must get.
struct HalfClosed<'a> {
    what: &'a str,
    request: &'a [u8],
    status: u16,
    body: &'a [u8],
    /// Whether the connection must then end with an EOF (not a reset).
    eof: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_after_body_is_answered() {
    let (ctx, _entered) = ctx();
    let server = start(Options::default(), routes_service(ctx)).await;
    let big = vec![b'a'; 120_000];
    let mut big_request = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    big_request.extend_from_slice(&big);
    let cases = [
        HalfClosed {
            what: "content-length body",
            request: b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
            status: 200,
            body: b"hello",
            eof: true,
        },
        HalfClosed {
            what: "chunked body",
            request: b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                       5\r\nhello\r\n0\r\n\r\n",
            status: 200,
            body: b"hello",
            eof: true,
        },
        HalfClosed {
            what: "120 000-byte body",
            request: &big_request,
            status: 200,
            body: &big,
            eof: true,
        },
        // Answered without reading the body: the answer is what counts, not how the
        // connection ends after it (EOF, or a reset for the unread body).
        HalfClosed {
            what: "404 with its body unread",
            request: b"POST /nothere HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
            status: 404,
            body: b"not here",
            eof: false,
        },
    ];
    let mut tallies = Vec::new();
    for case in cases {
        let mut tally = Tally::new(case.what, 100);
        for round in 0..100 {
            let outcome: Result<(), String> = async {
                let received = exchange_half_closed(server.addr, case.request).await;
                if received.is_one(case.status, case.body)
                    && (!case.eof || received.end == End::Eof)
                {
                    Ok(())
                } else {
                    Err(received.summary())
                }
            }
            .await;
            tally.record(round, outcome);
        }
        tallies.push(tally);
    }
    assert_all_right(&tallies);
}

// ---------------------------------------------------------------------------------------------
// 5. closed() resolves after the on_close callbacks ran

/// A counter of `on_close` callbacks run on a client, and what waiters on `closed()` read of it
/// once `closed()` resolved for them.
struct CloseCount {
    counter: Arc<AtomicUsize>,
    /// A waiter on a task of its own (a runtime worker).
    spawned: oneshot::Receiver<usize>,
}

/// Registers an `on_close` callback counting into a new counter, and a task that waits on
/// `closed()` (registered as a waiter before this returns) and then reads the counter.
async fn count_closes(client: &ClientInfo) -> CloseCount {
    let counter = Arc::new(AtomicUsize::new(0));
    let counted = counter.clone();
    client.on_close(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    let (waiting_tx, waiting) = oneshot::channel();
    let (seen_tx, spawned) = oneshot::channel();
    let (watcher, read) = (client.clone(), counter.clone());
    tokio::spawn(async move {
        let mut closed = std::pin::pin!(watcher.closed());
        let done =
            std::future::poll_fn(|cx| Poll::Ready(closed.as_mut().poll(cx).is_ready())).await;
        let _ = waiting_tx.send(());
        if !done {
            closed.await;
        }
        let _ = seen_tx.send(read.load(Ordering::SeqCst));
    });
    within("the closed() waiter is registered", waiting)
        .await
        .expect("the waiter task runs");
    CloseCount { counter, spawned }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_resolves_after_on_close_callbacks() {
    let (ctx, _entered) = ctx();
    let mut harness = common::serve(Options::default(), routes_service(ctx)).await;
    let mut tallies = Vec::new();
    for close_by_handler in [false, true] {
        let what = if close_by_handler {
            "the handler calls close()"
        } else {
            "the peer drops the connection"
        };
        let mut tally = Tally::new(what, 150);
        for round in 0..150 {
            let outcome: Result<(), String> = async {
                let mut stream = common::connect(harness.addr).await;
                let client = harness.next_client().await;
                let count = count_closes(&client).await;
                // A second waiter: this test's own future (not a runtime worker, so it is woken
                // from the thread that closes the connection, and runs alongside it).
                let mut closed = std::pin::pin!(client.closed());
                let done =
                    std::future::poll_fn(|cx| Poll::Ready(closed.as_mut().poll(cx).is_ready()))
                        .await;
                if done {
                    return Err("closed() resolved before the connection was closed".into());
                }
                if close_by_handler {
                    within(
                        "write GET /close",
                        stream.write_all(b"GET /close HTTP/1.1\r\nhost: x\r\n\r\n"),
                    )
                    .await
                    .expect("write GET /close");
                } else {
                    drop(stream);
                }
                within("closed() resolves", closed).await;
                let here = count.counter.load(Ordering::SeqCst);
                let spawned = within("closed() resolves on a task", count.spawned)
                    .await
                    .expect("the waiter task reports");
                if (here, spawned) == (1, 1) {
                    Ok(())
                } else {
                    Err(format!(
                        "on_close had run {here} time(s) when closed() resolved here, \
                         {spawned} time(s) on a task"
                    ))
                }
            }
            .await;
            tally.record(round, outcome);
        }
        tallies.push(tally);
    }
    assert_all_right(&tallies);
}

// ---------------------------------------------------------------------------------------------
// 7. HTTP/2: the idle clock is armed again when the last response ends on a stream's task

/// A response body whose drop takes 50 ms: the stream's task drops it (and, after it, the
/// response's guard inside the crate's body wrapper) after the connection's task has written
/// the stream's end.
struct SlowDrop(Full<Bytes>);

impl Body for SlowDrop {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        // Inside `block_in_place`, so that the runtime goes on meanwhile: the connection's
        // task, woken by the stream's last frame, would otherwise wait in this worker's LIFO
        // slot until the drop is over, and only then see the stream end.
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(50)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_idle_clock_rearmed_when_last_response_ends_on_stream_task() {
    let service = tower::service_fn(|_req: Request<RequestBody>| async {
        // Waits: the stream is spawned on a task of its own. Longer than the idle clock, so
        // that the deadline armed when the connection started passes while it is in service
        // (and re-arms nothing): only the end of the response can start the idle clock again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok::<_, Infallible>(Response::new(SlowDrop(Full::new(Bytes::from_static(
            b"ok",
        )))))
    });
    let options = Options::default().with_http2_timeout(Some(Duration::from_millis(500)));
    let mut harness = common::serve(options, service).await;
    let mut tally = Tally::new("one h2c response, then idle", 5);
    for round in 0..5 {
        let outcome: Result<(), String> = async {
            let mut client = common::h2_client(harness.addr).await;
            let info = harness.next_client().await;
            let response = within(
                "the response",
                client
                    .sender
                    .send_request(common::h2_req(harness.addr, "GET", "/", "")),
            )
            .await
            .expect("the response");
            if common::body_of(response).await != "ok" {
                return Err("wrong body".into());
            }
            let idle = Instant::now();
            // The client keeps the connection open (its sender alive) and idle: the server's idle
            // clock (500 ms) must close it.
            let closed = tokio::time::timeout(Duration::from_secs(3), info.closed()).await;
            drop(client);
            match closed {
                Ok(()) => Ok(()),
                Err(_) => Err(format!(
                    "still open {:?} after its last response (idle clock 500 ms)",
                    idle.elapsed()
                )),
            }
        }
        .await;
        tally.record(round, outcome);
    }
    tally.assert_all_right();
}

// ---------------------------------------------------------------------------------------------
// 8. The options of the client rule its connection, not the driver's

/// An accept loop of its own: every connection's `ClientInfo` is built with `client_options`,
/// and served with drivers built from the default options.
async fn serve_with_client_options<S, B>(
    client_options: Options,
    service: S,
) -> (SocketAddr, JoinHandle<()>)
where
    S: Handler<B>,
    B: HandlerBody,
{
    let client_options = Arc::new(client_options);
    let drivers = Arc::new(DefaultHttpDriverFactory::new(&Options::default()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let client = ClientInfo::builder_for_tcp(&stream)
                .expect("the accepted stream's addresses")
                .options(client_options.clone())
                .build();
            let remote = RemoteClient::new(stream, client);
            let (drivers, service) = (drivers.clone(), service.clone());
            tokio::spawn(async move {
                remote.start(&*drivers, service).await;
            });
        }
    });
    (addr, accept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_of_the_client_rule_the_connection() {
    // HTTP/1: the client's header size limit (hyper answers a head over it with 431).
    let (ctx, _entered) = ctx();
    let (addr, accept) = serve_with_client_options(
        Options::default().with_header_size_limit(1024),
        routes_service(ctx),
    )
    .await;
    let small = exchange(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        small.is_one(200, b"ok"),
        "a small head: {}",
        small.summary()
    );
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-fill: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(4000)
    );
    let big = exchange(addr, big.as_bytes()).await;
    let statuses: Vec<u16> = big.responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [431],
        "a 4 KiB head under the client's 1 KiB limit: {}",
        big.summary()
    );
    accept.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_of_the_client_rule_an_http2_connection() {
    // The client's concurrent stream limit.
    let entered = Arc::new(AtomicUsize::new(0));
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let service = {
        let (entered, release) = (entered.clone(), release.clone());
        tower::service_fn(move |req: Request<RequestBody>| {
            let (entered, entered_tx, release) =
                (entered.clone(), entered_tx.clone(), release.clone());
            async move {
                if req.uri().path() == "/block" {
                    entered.fetch_add(1, Ordering::SeqCst);
                    let _ = entered_tx.send(());
                    release
                        .acquire()
                        .await
                        .expect("the semaphore is never closed")
                        .forget();
                }
                Ok::<_, Infallible>(full("ok"))
            }
        })
    };
    let (addr, accept) =
        serve_with_client_options(Options::default().with_concurrent_stream_limit(2), service)
            .await;
    let mut client = common::h2_client(addr).await;
    // A first exchange: the server's SETTINGS have arrived before the streams below open.
    let response = within(
        "the first response",
        client
            .sender
            .send_request(common::h2_req(addr, "GET", "/", "")),
    )
    .await
    .expect("the first response");
    assert_eq!(common::body_of(response).await, "ok");
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let mut sender = client.sender.clone();
            tokio::spawn(async move {
                let response = sender
                    .send_request(common::h2_req(addr, "GET", "/block", ""))
                    .await?;
                let status = response.status();
                response.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            })
        })
        .collect();
    for _ in 0..2 {
        within("two /block handlers enter", entered_rx.recv())
            .await
            .expect("the handlers' channel is open");
    }
    // No event says that a third stream is not served: give it time to be.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        entered.load(Ordering::SeqCst),
        2,
        "handlers running at once on a connection whose client allows 2 streams"
    );
    release.add_permits(3);
    let mut completed = 0;
    for stream in streams {
        let outcome = within("a /block stream ends", stream)
            .await
            .expect("the stream task does not panic");
        // Either the client waited for a free stream (200), or the server refused the third
        // stream: both keep to the limit; at least the two admitted ones complete.
        if let Ok(status) = outcome {
            assert_eq!(status, StatusCode::OK);
            completed += 1;
        }
    }
    assert!(completed >= 2, "only {completed} /block streams completed");
    drop(client);
    accept.abort();
}

// ---------------------------------------------------------------------------------------------
// 6. A half-closed peer whose handler takes too long: cut by the half-close clock

/// Signals when dropped (the handler's future was dropped, or it returned).
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_peer_gone_during_slow_handler_is_cut_by_its_clock() {
    for drop_socket in [false, true] {
        let how = if drop_socket {
            "the peer dropped its socket"
        } else {
            "the peer shut its write side"
        };
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Status>();
        let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel::<oneshot::Receiver<()>>();
        let service = tower::service_fn(move |req: Request<RequestBody>| {
            let (seen_tx, dropped_tx) = (seen_tx.clone(), dropped_tx.clone());
            async move {
                let client = req
                    .extensions()
                    .get::<ClientInfo>()
                    .expect("ClientInfo inserted by the server")
                    .clone();
                let (tx, rx) = oneshot::channel();
                let _guard = DropSignal(Some(tx));
                let _ = dropped_tx.send(rx);
                // The peer's EOF has no event a handler can await: look for a while (well
                // within the 300 ms clock), and report what was seen.
                let mut status = client.status();
                for _ in 0..50 {
                    if status.contains(Status::CLOSED_RD) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(4)).await;
                    status = client.status();
                }
                let _ = seen_tx.send(status);
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, Infallible>(full("too late"))
            }
        });
        let options = Options::default().with_half_close_timeout(Some(Duration::from_millis(300)));
        let mut harness = common::serve(options, service).await;
        let mut stream = common::connect(harness.addr).await;
        let client = harness.next_client().await;
        within(
            "write GET /long",
            stream.write_all(b"GET /long HTTP/1.1\r\nhost: x\r\n\r\n"),
        )
        .await
        .expect("write GET /long");
        let mut stream = if drop_socket {
            drop(stream);
            None
        } else {
            within("shut the write side", stream.shutdown())
                .await
                .expect("shut the write side");
            Some(stream)
        };
        let handler_dropped = within("the handler starts", dropped_rx.recv())
            .await
            .expect("the handler's channel is open");
        let seen = within("the handler reports the status it saw", seen_rx.recv())
            .await
            .expect("the handler's channel is open");
        assert!(
            seen.contains(Status::CLOSED_RD),
            "{how}: the handler saw {seen:?}, not CLOSED_RD"
        );
        let cut = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), handler_dropped)
            .await
            .unwrap_or_else(|_| {
                panic!("{how}: the handler still runs 5 s after the half-close clock (300 ms)")
            })
            .expect("the drop guard signals");
        tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .unwrap_or_else(|_| panic!("{how}: closed() has not resolved 5 s after the handler"));
        let reason = harness.reason_of(client.id().get()).await;
        assert!(
            matches!(reason, CloseReason::Timeout(TimeoutKind::HalfClose)),
            "{how}: closed with {reason:?} (after {:?})",
            cut.elapsed()
        );
        if let Some(stream) = stream.as_mut() {
            let (bytes, end) = read_until_end(stream).await;
            assert!(
                bytes.is_empty(),
                "{how}: an answer after the clock ran out: {:?} then {end:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    // With the default options, a half-closed peer is still answered when the answer comes
    // in time.
    let (ctx, _entered) = ctx();
    let server = start(Options::default(), routes_service(ctx)).await;
    let mut tally = Tally::new("GET /late, half-closed, default options", 5);
    for round in 0..5 {
        let outcome: Result<(), String> = async {
            let received =
                exchange_half_closed(server.addr, b"GET /late HTTP/1.1\r\nhost: x\r\n\r\n").await;
            if received.is_one(200, b"late") && received.end == End::Eof {
                Ok(())
            } else {
                Err(received.summary())
            }
        }
        .await;
        tally.record(round, outcome);
    }
    tally.assert_all_right();
}

// ---------------------------------------------------------------------------------------------
// 9. HTTP/2: the answers a connection holds for a peer that does not read are bounded

const ANSWER: usize = 64 * 1024;
const STREAMS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_buffered_answers_are_bounded_per_connection() {
    let entered = Arc::new(AtomicUsize::new(0));
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let service = {
        let entered = entered.clone();
        tower::service_fn(move |_req: Request<RequestBody>| {
            // Counted where the answer is made: the crate may call the service (a tower
            // `call`) at once and let its future wait for the budget.
            let entered = entered.clone();
            let entered_tx = entered_tx.clone();
            async move {
                entered.fetch_add(1, Ordering::SeqCst);
                let _ = entered_tx.send(());
                Ok::<_, Infallible>(full(vec![b'x'; ANSWER]))
            }
        })
    };
    let options = Options::default()
        .with_http2_buffered_response_limit(256 * 1024)
        // The peer below stops reading on purpose: no rate clock to cut it meanwhile.
        .with_min_response_rate(None);
    let harness = common::serve(options, service).await;
    let addr = harness.addr;
    // A client that takes 1 KiB of each answer and no more until its body is read: the rest of
    // every answer stays with the server.
    let stream = common::connect(addr).await;
    let (sender, conn) = within(
        "h2 handshake",
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1024)
            .initial_connection_window_size(4 << 20)
            .adaptive_window(false)
            .handshake::<_, Full<Bytes>>(TokioIo::new(stream)),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let read_now = Arc::new(Semaphore::new(0));
    let streams: Vec<JoinHandle<Result<usize, hyper::Error>>> = (0..STREAMS)
        .map(|_| {
            let mut sender = sender.clone();
            let read_now = read_now.clone();
            tokio::spawn(async move {
                let response = sender
                    .send_request(common::h2_req(addr, "GET", "/", ""))
                    .await?;
                let _permit = read_now.acquire().await.expect("never closed");
                let body = response.into_body().collect().await?;
                Ok(body.to_bytes().len())
            })
        })
        .collect();
    for _ in 0..4 {
        within("the first handlers run", entered_rx.recv())
            .await
            .expect("the handler's channel is open");
    }
    // No event says that the other streams' handlers wait: give them time to run.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let running = entered.load(Ordering::SeqCst);
    assert!(
        running <= 16,
        "{running} of {STREAMS} handlers ran (64 KiB answers each) while the peer read nothing; \
         the limit is 256 KiB"
    );
    read_now.add_permits(STREAMS);
    for (i, stream) in streams.into_iter().enumerate() {
        let length = within("an answer is read", stream)
            .await
            .expect("the stream task does not panic")
            .unwrap_or_else(|error| panic!("stream {i}: {error}"));
        assert_eq!(length, ANSWER, "stream {i}: a truncated answer");
    }
    assert_eq!(entered.load(Ordering::SeqCst), STREAMS);
    drop(sender);
    conn.abort();
}
