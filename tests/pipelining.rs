//! HTTP/1 pipelining under `RemoteClient`: `ClientIo` gathers the responses to a pipelined
//! burst and writes them together. Every test here sends several requests in one write over a
//! real loopback socket and checks that no response is stranded in the gathered output (each
//! wait is bounded: a stranded response fails as a timeout), lost or reordered: a burst, a
//! fast response behind a slow one, a streamed body's chunk, an upgrade with its first bytes in
//! the head's packet, a request body still held (or still arriving), `Expect: 100-continue`,
//! `Connection: close` at the end of a burst, and a burst over TLS.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::{parse_response, within, ChannelBody, RawResponse};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_remote_client::{Options, RequestBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

type Body = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------------
// The server under test

/// What the handler reports to the test, and what the test hands to the handler.
#[derive(Clone)]
struct Ctx {
    /// `/slow`: the handler started.
    slow_entered: mpsc::UnboundedSender<()>,
    /// `/slow` answers once this is notified.
    slow_release: Arc<Notify>,
    /// `/stream`: the sender of the response body (its first chunk, "one", already sent).
    streams: mpsc::UnboundedSender<mpsc::UnboundedSender<Bytes>>,
    /// `/keep`, `/keep-read`: the request body is held by a task.
    keep_held: mpsc::UnboundedSender<()>,
    /// The task holding the body lets go of it once this is notified.
    keep_release: Arc<Notify>,
    /// The task let go of the body: what it read of it (`/keep` drops it unread: empty).
    keep_done: mpsc::UnboundedSender<Bytes>,
    /// `/upgrade`: what the upgraded connection's task read (or why it failed).
    upgraded: mpsc::UnboundedSender<Result<Vec<u8>, String>>,
}

/// The test's side of [`Ctx`].
struct Probe {
    slow_entered: mpsc::UnboundedReceiver<()>,
    slow_release: Arc<Notify>,
    streams: mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>,
    keep_held: mpsc::UnboundedReceiver<()>,
    keep_release: Arc<Notify>,
    keep_done: mpsc::UnboundedReceiver<Bytes>,
    upgraded: mpsc::UnboundedReceiver<Result<Vec<u8>, String>>,
}

fn probe() -> (Ctx, Probe) {
    let (slow_entered_tx, slow_entered) = mpsc::unbounded_channel();
    let (streams_tx, streams) = mpsc::unbounded_channel();
    let (keep_held_tx, keep_held) = mpsc::unbounded_channel();
    let (keep_done_tx, keep_done) = mpsc::unbounded_channel();
    let (upgraded_tx, upgraded) = mpsc::unbounded_channel();
    let slow_release = Arc::new(Notify::new());
    let keep_release = Arc::new(Notify::new());
    let ctx = Ctx {
        slow_entered: slow_entered_tx,
        slow_release: slow_release.clone(),
        streams: streams_tx,
        keep_held: keep_held_tx,
        keep_release: keep_release.clone(),
        keep_done: keep_done_tx,
        upgraded: upgraded_tx,
    };
    let probe = Probe {
        slow_entered,
        slow_release,
        streams,
        keep_held,
        keep_release,
        keep_done,
        upgraded,
    };
    (ctx, probe)
}

fn full(body: impl Into<Bytes>) -> Response<Body> {
    Response::new(Full::new(body.into()).boxed())
}

/// `/n/{k}`: `k`. `/slow`: "slow" once released. `/stream`: a chunked body fed by the test.
/// `/keep`: "kept" at once, the body held unread until released, then dropped. `/keep-read`:
/// the same, but the body is read to its end once released. `/echo`: the body back.
/// `/upgrade`: 101, then the upgraded connection answers its first 5 bytes upper-cased.
async fn handler(mut req: Request<RequestBody>, ctx: Ctx) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/n/") {
        return Ok(full(n.to_owned()));
    }
    Ok(match path.as_str() {
        "/slow" => {
            let _ = ctx.slow_entered.send(());
            ctx.slow_release.notified().await;
            full("slow")
        }
        "/stream" => {
            let (tx, body) = ChannelBody::new();
            tx.send(Bytes::from_static(b"one")).unwrap();
            let _ = ctx.streams.send(tx);
            Response::new(body.boxed())
        }
        "/keep" | "/keep-read" => {
            let read = path == "/keep-read";
            let body = req.into_body();
            tokio::spawn(async move {
                let _ = ctx.keep_held.send(());
                ctx.keep_release.notified().await;
                let got = if read {
                    match within("the held body, read", body.collect()).await {
                        Ok(collected) => collected.to_bytes(),
                        Err(error) => Bytes::from(format!("body error: {error}")),
                    }
                } else {
                    drop(body);
                    Bytes::new()
                };
                let _ = ctx.keep_done.send(got);
            });
            full("kept")
        }
        "/echo" => match req.into_body().collect().await {
            Ok(body) => full(body.to_bytes()),
            Err(_) => {
                let mut response = full("");
                *response.status_mut() = StatusCode::BAD_REQUEST;
                response
            }
        },
        "/upgrade" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let result = async {
                    let upgraded = on_upgrade.await.map_err(|e| e.to_string())?;
                    let mut io = TokioIo::new(upgraded);
                    let mut first = [0u8; 5];
                    io.read_exact(&mut first).await.map_err(|e| e.to_string())?;
                    io.write_all(&first.to_ascii_uppercase())
                        .await
                        .map_err(|e| e.to_string())?;
                    io.flush().await.map_err(|e| e.to_string())?;
                    Ok(first.to_vec())
                }
                .await;
                let _ = ctx.upgraded.send(result);
            });
            let mut response = full("");
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response
                .headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            response
                .headers_mut()
                .insert("upgrade", "echo".parse().unwrap());
            response
        }
        _ => {
            let mut response = full("");
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    })
}

async fn serve() -> (common::Harness, Probe) {
    let (ctx, probe) = probe();
    let harness = common::serve(
        Options::default(),
        tower::service_fn(move |req| handler(req, ctx.clone())),
    )
    .await;
    (harness, probe)
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1 client that keeps the bytes it read past a response for the next one

struct Conn<S> {
    io: S,
    /// Read and not yet taken by a response.
    buf: Vec<u8>,
    /// Every byte read so far.
    received: usize,
}

impl Conn<TcpStream> {
    async fn tcp(addr: SocketAddr) -> Self {
        Conn::new(common::connect(addr).await)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S) -> Self {
        Conn {
            io,
            buf: Vec::new(),
            received: 0,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("write", self.io.write_all(bytes))
            .await
            .expect("write");
        within("flush", self.io.flush()).await.expect("flush");
    }

    /// One read into `buf`; the number of bytes read (0 at EOF).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = self.io.read(&mut chunk).await.expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        self.received += n;
        n
    }

    /// The next complete response, taken from the front of `buf`.
    async fn response(&mut self, what: &str) -> RawResponse {
        within(what, async {
            loop {
                if let Some((response, used)) = parse_response(&self.buf) {
                    // A body without a length would run to EOF: none of the handlers sends one.
                    assert!(
                        (100..200).contains(&response.status)
                            || response.header("content-length").is_some()
                            || response.header("transfer-encoding").is_some(),
                        "{what}: a response without a length: {response:?}"
                    );
                    self.buf.drain(..used);
                    return response;
                }
                if self.fill().await == 0 {
                    panic!(
                        "{what}: EOF before a complete response: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
            }
        })
        .await
    }

    /// Reads until `buf` holds `needle` (nothing is taken from `buf`).
    async fn wait_for(&mut self, what: &str, needle: &[u8]) {
        within(what, async {
            while !self.buf.windows(needle.len()).any(|w| w == needle) {
                if self.fill().await == 0 {
                    panic!(
                        "{what}: EOF before {:?}: {:?}",
                        String::from_utf8_lossy(needle),
                        String::from_utf8_lossy(&self.buf)
                    );
                }
            }
        })
        .await
    }

    /// Takes exactly `len` bytes from the front of `buf`, reading as needed.
    async fn take(&mut self, what: &str, len: usize) -> Vec<u8> {
        within(what, async {
            while self.buf.len() < len {
                if self.fill().await == 0 {
                    panic!("{what}: EOF after {:?}", String::from_utf8_lossy(&self.buf));
                }
            }
        })
        .await;
        self.buf.drain(..len).collect()
    }

    /// Reads to EOF; everything not yet taken.
    async fn rest_to_eof(&mut self, what: &str) -> Vec<u8> {
        within(what, async { while self.fill().await > 0 {} }).await;
        std::mem::take(&mut self.buf)
    }

    /// Expects a 200 with `body` next.
    async fn expect_ok(&mut self, what: &str, body: &str) {
        let response = self.response(what).await;
        assert_eq!(response.status, 200, "{what}: {response:?}");
        assert_eq!(
            String::from_utf8_lossy(&response.body),
            body,
            "{what}: {response:?}"
        );
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")
}

/// `GET /n/0` .. `GET /n/{count - 1}`, back to back.
fn burst(count: usize) -> String {
    (0..count).map(|k| get(&format!("/n/{k}"))).collect()
}

/// Sends 40 GETs in one write and reads the 40 answers, in order.
async fn burst_of_40<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) {
    conn.send(burst(40).as_bytes()).await;
    for k in 0..40 {
        conn.expect_ok(&format!("response {k} of the burst"), &k.to_string())
            .await;
    }
    assert!(
        conn.buf.is_empty(),
        "nothing after the 40th response: {:?}",
        String::from_utf8_lossy(&conn.buf)
    );
}

/// One more ordinary request on the connection.
async fn one_more<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) {
    conn.send(get("/n/40").as_bytes()).await;
    conn.expect_ok("the request after the burst", "40").await;
    assert!(conn.buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 1. A burst

#[tokio::test]
async fn a_burst_of_40_is_answered_in_order_and_the_connection_stays_usable() {
    let (mut harness, _probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;
    let client = harness.next_client().await;

    burst_of_40(&mut conn).await;
    // Every byte the server counted as written has been received, and no more.
    assert_eq!(
        client.bytes_written(),
        conn.received as u64,
        "bytes written by the server vs read by the client after the burst"
    );

    // Keep-alive still works after the burst.
    one_more(&mut conn).await;
    assert_eq!(
        client.bytes_written(),
        conn.received as u64,
        "bytes written by the server vs read by the client after one more request"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A fast response is not held behind a slow one

#[tokio::test]
async fn a_fast_response_is_not_held_while_a_slow_one_is_in_flight() {
    let (harness, mut probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;

    conn.send(format!("{}{}{}", get("/n/1"), get("/slow"), get("/n/2")).as_bytes())
        .await;
    within("the /slow handler starts", probe.slow_entered.recv())
        .await
        .expect("handler gone");
    // /slow is not released: the answer to /n/1, gathered before it, must be on the wire.
    conn.expect_ok("/n/1 while /slow is in flight", "1").await;
    assert!(
        conn.buf.is_empty(),
        "nothing may follow /n/1 before /slow is released: {:?}",
        String::from_utf8_lossy(&conn.buf)
    );

    probe.slow_release.notify_one();
    conn.expect_ok("/slow once released", "slow").await;
    conn.expect_ok("/n/2 after /slow", "2").await;
    assert!(conn.buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. A streamed body's chunk is not held

#[tokio::test]
async fn a_streamed_chunk_goes_out_while_the_body_is_open() {
    let (harness, mut probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;

    conn.send(format!("{}{}", get("/stream"), get("/n/1")).as_bytes())
        .await;
    let body = within("the /stream handler answers", probe.streams.recv())
        .await
        .expect("handler gone");
    // The body is still open: its head and first chunk must be on the wire already.
    conn.wait_for("the first chunk while the body is open", b"3\r\none\r\n")
        .await;

    body.send(Bytes::from_static(b"two")).unwrap();
    drop(body);
    let response = conn.response("/stream, complete").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        "3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    );
    conn.expect_ok("/n/1 after the stream", "1").await;
    assert!(conn.buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 4. An upgrade after a pipelined request, its first bytes in the head's packet

#[tokio::test]
async fn an_upgrade_after_a_pipelined_request_with_early_bytes() {
    let (mut harness, mut probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;
    let client = harness.next_client().await;

    let mut bytes = get("/n/1").into_bytes();
    bytes.extend_from_slice(
        b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nhello",
    );
    conn.send(&bytes).await;

    conn.expect_ok("/n/1 before the upgrade", "1").await;
    let switching = conn.response("the 101").await;
    assert_eq!(switching.status, 101, "{switching:?}");
    assert_eq!(switching.header("upgrade"), Some("echo"));
    assert_eq!(
        conn.take("the upgraded connection's answer", 5).await,
        b"HELLO"
    );
    assert!(conn.buf.is_empty());

    let read = within("the upgraded task's report", probe.upgraded.recv())
        .await
        .expect("task gone")
        .expect("the upgraded connection");
    assert_eq!(read, b"hello");
    assert!(client.is_exported());
}

// ---------------------------------------------------------------------------------------------
// 5. A request body kept unread

#[tokio::test]
async fn a_response_goes_out_while_its_request_body_is_held_unread() {
    let (harness, mut probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;

    let mut bytes =
        b"POST /keep HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123456789".to_vec();
    bytes.extend_from_slice(get("/n/1").as_bytes());
    conn.send(&bytes).await;

    within("the body is held", probe.keep_held.recv())
        .await
        .expect("task gone");
    conn.expect_ok("/keep while its body is held", "kept").await;
    assert!(
        probe.keep_done.try_recv().is_err(),
        "the body is still held"
    );

    probe.keep_release.notify_one();
    let read = within("the body is dropped", probe.keep_done.recv())
        .await
        .expect("task gone");
    assert!(read.is_empty(), "dropped unread");
    conn.expect_ok("/n/1 after /keep", "1").await;
    assert!(conn.buf.is_empty());
}

/// The same, with the body still arriving: hyper has handed the handler the part it has and
/// waits for the body to be read before it reads more, so no read of the socket comes to
/// write the response gathered: only the flush can.
#[tokio::test]
async fn a_response_goes_out_while_its_request_body_is_still_arriving() {
    let (harness, mut probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;

    conn.send(b"POST /keep-read HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n01234")
        .await;
    within("the body is held", probe.keep_held.recv())
        .await
        .expect("task gone");
    conn.expect_ok("/keep-read while its body is held and incomplete", "kept")
        .await;
    assert!(
        probe.keep_done.try_recv().is_err(),
        "the body is still held"
    );

    // The rest of the body and the next request; then the body is read.
    conn.send(format!("56789{}", get("/n/1")).as_bytes()).await;
    probe.keep_release.notify_one();
    let read = within("the body is read", probe.keep_done.recv())
        .await
        .expect("task gone");
    assert_eq!(&read[..], b"0123456789");
    conn.expect_ok("/n/1 after /keep-read", "1").await;
    assert!(conn.buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 6. Expect: 100-continue after a pipelined request

#[tokio::test]
async fn continue_goes_out_after_a_pipelined_response() {
    let (harness, _probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;

    let mut bytes = get("/n/1").into_bytes();
    bytes.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    );
    conn.send(&bytes).await;

    conn.expect_ok("/n/1 before the 100", "1").await;
    let cont = conn.response("100 Continue").await;
    assert_eq!(cont.status, 100, "{cont:?}");
    assert!(
        conn.buf.is_empty(),
        "nothing before the body is sent: {:?}",
        String::from_utf8_lossy(&conn.buf)
    );

    conn.send(b"hello").await;
    conn.expect_ok("/echo", "hello").await;
    assert!(conn.buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 7. Connection: close at the end of a burst

#[tokio::test]
async fn a_burst_ending_with_close_is_written_before_the_shutdown() {
    let (harness, _probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;

    let mut bytes = burst(7);
    bytes.push_str("GET /n/7 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    conn.send(bytes.as_bytes()).await;

    let all = conn.rest_to_eof("the burst, to EOF").await;
    let mut rest = &all[..];
    for k in 0..8 {
        let (response, used) = parse_response(rest).unwrap_or_else(|| {
            panic!(
                "response {k} missing at EOF: {:?}",
                String::from_utf8_lossy(&all)
            )
        });
        assert_eq!(response.status, 200, "response {k}: {response:?}");
        assert_eq!(response.body, k.to_string().as_bytes(), "response {k}");
        rest = &rest[used..];
    }
    assert!(
        rest.is_empty(),
        "nothing after the 8th response: {:?}",
        String::from_utf8_lossy(rest)
    );
}

/// The same, with a request after the closing one in the same write: hyper's read buffer is
/// never empty, so it never reads the socket again (no read comes to write what is gathered)
/// and only the shutdown can write the answers. The request after the close is not answered.
#[tokio::test]
async fn a_burst_closing_with_bytes_left_over_is_written_at_the_shutdown() {
    let (harness, _probe) = serve().await;
    let mut conn = Conn::tcp(harness.addr).await;

    let mut bytes = burst(3);
    bytes.push_str("GET /n/3 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    bytes.push_str(&get("/n/4"));
    conn.send(bytes.as_bytes()).await;

    for k in 0..4 {
        conn.expect_ok(&format!("response {k} before the close"), &k.to_string())
            .await;
    }
    let rest = conn.rest_to_eof("EOF after the closing response").await;
    assert!(
        rest.is_empty(),
        "nothing after the closing response: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A burst over TLS

#[cfg(feature = "tls")]
#[tokio::test]
async fn a_burst_over_tls_is_answered_in_order() {
    use hyper_remote_client::driver::DefaultHttpDriverFactory;

    let (acceptor, connector) = common::tls::self_signed();
    let (ctx, _probe) = probe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let options = Arc::new(Options::default());
        let drivers = DefaultHttpDriverFactory::new(&options);
        let (stream, _) = listener.accept().await.unwrap();
        let client = acceptor.accept_tcp(stream, options).await.unwrap();
        client
            .start(
                &drivers,
                tower::service_fn(move |req| handler(req, ctx.clone())),
            )
            .await
    });

    let tcp = common::connect(addr).await;
    let tls = within(
        "TLS handshake",
        connector.connect(common::tls::localhost(), tcp),
    )
    .await
    .expect("TLS handshake");
    assert_ne!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut conn = Conn::new(tls);
    burst_of_40(&mut conn).await;
    one_more(&mut conn).await;
    drop(conn);
    within("the TLS connection ends", server)
        .await
        .expect("server task");
}

// ---------------------------------------------------------------------------------------------
// 9. A failing request in a burst

/// A handler's error ends the connection through hyper's error path, which neither flushes
/// nor shuts the stream down: the answers held for the requests before it still go out.
#[tokio::test]
async fn answers_before_a_failing_request_are_written() {
    let service = tower::service_fn(|req: Request<RequestBody>| async move {
        if req.uri().path() == "/fail" {
            Err(std::io::Error::other("the handler failed"))
        } else {
            Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let harness = common::serve(Options::default(), service).await;
    let mut conn = Conn::tcp(harness.addr).await;

    let bytes = [get("/a"), get("/b"), get("/fail"), get("/c")].concat();
    conn.send(bytes.as_bytes()).await;

    let all = conn.rest_to_eof("the answers, to EOF").await;
    let mut rest = &all[..];
    for k in 0..2 {
        let (response, used) = parse_response(rest).unwrap_or_else(|| {
            panic!(
                "answer {k} missing at EOF: {:?}",
                String::from_utf8_lossy(&all)
            )
        });
        assert_eq!(response.status, 200, "answer {k}: {response:?}");
        assert_eq!(response.body, b"ok", "answer {k}");
        rest = &rest[used..];
    }
    assert!(
        !String::from_utf8_lossy(rest).contains("HTTP/1.1 200"),
        "no answer after the failing request: {:?}",
        String::from_utf8_lossy(rest)
    );
}
