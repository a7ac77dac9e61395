//! The connection lifecycle: which clock runs when, what it is counted as, and when a client
//! is really closed. Every test runs a real `Server` on 127.0.0.1:0 and talks to it over raw
//! sockets (HTTP/2 as hand-written frames, where a client library would refuse or hide what is
//! being tested). Timings are generous; the assertions are about outcome and order.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, parse_response, read_response, within, HandlerResult, RawResponse};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_remote_client::{
    detach,
    layer::{Handler, HandlerBody},
    ClientInfo, MinDataRate, Options, RequestBody, Server, ServerHandle, Stats, Status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tower::Service;

// ---------------------------------------------------------------------------------------------
// The server under test

/// What the handler reports to the test, and what the test hands to the handler.
#[derive(Clone)]
struct Ctx {
    /// `/hold`, `/huge`, `/switch`: the handler started (with its client).
    entered: mpsc::UnboundedSender<ClientInfo>,
    /// `/hold` waits on this.
    release_hold: Arc<Notify>,
    /// `/hold-upgrade`: the detached connection is held (its client).
    held: mpsc::UnboundedSender<ClientInfo>,
    /// `/hold-upgrade`: drops the detached connection when this fires.
    release_detached: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    /// `/hold-upgrade`: the detached connection was dropped.
    dropped: mpsc::UnboundedSender<()>,
}

/// The test's side of [`Ctx`].
struct Probe {
    entered: mpsc::UnboundedReceiver<ClientInfo>,
    release_hold: Arc<Notify>,
    held: mpsc::UnboundedReceiver<ClientInfo>,
    release_detached: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    dropped: mpsc::UnboundedReceiver<()>,
}

fn probe() -> (Ctx, Probe) {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (held_tx, held) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let release_hold = Arc::new(Notify::new());
    let release_detached = Arc::new(Mutex::new(None));
    let ctx = Ctx {
        entered: entered_tx,
        release_hold: release_hold.clone(),
        held: held_tx,
        release_detached: release_detached.clone(),
        dropped: dropped_tx,
    };
    let probe = Probe {
        entered,
        release_hold,
        held,
        release_detached,
        dropped,
    };
    (ctx, probe)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

fn switching(upgrade: &'static str) -> Response<Full<Bytes>> {
    let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert("connection", "upgrade".parse().unwrap());
    headers.insert("upgrade", upgrade.parse().unwrap());
    response
}

/// The routes:
/// - `/`: 200 "ok".
/// - `/hold`: reports entry, waits for `release_hold`, then 200 "held".
/// - `/big`: 64 KiB. `/huge`: reports entry, then 16 MiB.
/// - `/collect`: reads the whole body, answers its length (400 if it cannot be read).
/// - `/slow`: answers after 500 ms with the client's status as the handler saw it then.
/// - `/upgrade`: 101, then echoes every byte on the detached connection.
/// - `/hold-upgrade`: 101, then holds the detached connection unread until
///   `release_detached` fires, drops it, and reports `dropped`.
/// - `/switch`: reports entry, answers 101 (whatever the request asked for), never detaches.
async fn handler(mut req: Request<RequestBody>, ctx: Ctx) -> HandlerResult {
    let client = req
        .extensions()
        .get::<ClientInfo>()
        .expect("inserted by the server")
        .clone();
    Ok(match req.uri().path() {
        "/hold" => {
            let _ = ctx.entered.send(client);
            ctx.release_hold.notified().await;
            Response::new(Full::new(Bytes::from_static(b"held")))
        }
        "/big" => Response::new(Full::new(Bytes::from(vec![b'b'; 64 * 1024]))),
        "/huge" => {
            let _ = ctx.entered.send(client);
            Response::new(Full::new(Bytes::from(vec![b'h'; 16 << 20])))
        }
        "/collect" => match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(Bytes::from(body.to_bytes().len().to_string()))),
            Err(_) => status(StatusCode::BAD_REQUEST),
        },
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let seen = client.status();
            Response::new(Full::new(Bytes::from(format!(
                "closed_rd={} closed_wr={}",
                seen.contains(Status::CLOSED_RD),
                seen.contains(Status::CLOSED_WR)
            ))))
        }
        "/upgrade" => {
            let on_detach = detach(&mut req);
            tokio::spawn(async move {
                if let Ok(conn) = on_detach.await {
                    let (mut from, mut to) = tokio::io::split(conn);
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                }
            });
            switching("echo")
        }
        "/hold-upgrade" => {
            let on_detach = detach(&mut req);
            let release = ctx.release_detached.lock().unwrap().take();
            let (held, dropped) = (ctx.held.clone(), ctx.dropped.clone());
            tokio::spawn(async move {
                let Ok(conn) = on_detach.await else { return };
                let _ = held.send(conn.client().clone());
                if let Some(release) = release {
                    let _ = release.await;
                }
                drop(conn);
                let _ = dropped.send(());
            });
            switching("held")
        }
        "/switch" => {
            let _ = ctx.entered.send(client);
            switching("nothing")
        }
        _ => Response::new(Full::new(Bytes::from_static(b"ok"))),
    })
}

struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    probe: Probe,
    serving: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl Running {
    fn stats(&self) -> Stats {
        self.handle.stats()
    }
}

async fn start<S, B>(options: Options, service: S, probe: Probe) -> Running
where
    S: Handler<B>,
    B: HandlerBody,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(options).listener(listener);
    let handle = server.handle();
    let serving = tokio::spawn(server.serve(service));
    Running {
        addr,
        handle,
        probe,
        serving,
    }
}

/// The server with [`handler`].
async fn run(options: Options) -> Running {
    let (ctx, probe) = probe();
    start(
        options,
        tower::service_fn(move |req| handler(req, ctx.clone())),
        probe,
    )
    .await
}

/// The server with [`handler`] behind a concurrency limit of `permits`.
async fn run_limited(options: Options, permits: usize) -> Running {
    let (ctx, probe) = probe();
    let service = tower::service_fn(move |req| handler(req, ctx.clone()));
    start(options, ConcurrencyLimit::new(service, permits), probe).await
}

/// tower's `ConcurrencyLimit`, written out: tower's `limit` feature is not among the
/// dev-dependencies. Same contract: `poll_ready` waits for a permit, the response future holds
/// it until it completes, and a clone starts without one.
struct ConcurrencyLimit<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    state: Permit,
}

enum Permit {
    None,
    Acquiring(Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>),
    Held(OwnedSemaphorePermit),
}

impl<S> ConcurrencyLimit<S> {
    fn new(inner: S, permits: usize) -> Self {
        ConcurrencyLimit {
            inner,
            semaphore: Arc::new(Semaphore::new(permits)),
            state: Permit::None,
        }
    }
}

impl<S: Clone> Clone for ConcurrencyLimit<S> {
    fn clone(&self) -> Self {
        ConcurrencyLimit {
            inner: self.inner.clone(),
            semaphore: self.semaphore.clone(),
            state: Permit::None,
        }
    }
}

impl<S, R> Service<R> for ConcurrencyLimit<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        loop {
            match &mut self.state {
                Permit::Held(_) => return self.inner.poll_ready(cx),
                Permit::Acquiring(acquire) => {
                    let permit = std::task::ready!(acquire.as_mut().poll(cx));
                    self.state = Permit::Held(permit);
                }
                Permit::None => {
                    let semaphore = self.semaphore.clone();
                    self.state = Permit::Acquiring(Box::pin(async move {
                        semaphore.acquire_owned().await.expect("never closed")
                    }));
                }
            }
        }
    }

    fn call(&mut self, req: R) -> Self::Future {
        let Permit::Held(permit) = std::mem::replace(&mut self.state, Permit::None) else {
            panic!("call before poll_ready");
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            drop(permit);
            result
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1 helpers

async fn connect(addr: SocketAddr) -> TcpStream {
    common::connect(addr).await
}

/// Reads until the server ends the connection: `Ok(bytes)` at EOF, `Err` on a reset.
async fn until_eof(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    within(
        "the server ends the connection",
        stream.read_to_end(&mut out),
    )
    .await?;
    Ok(out)
}

/// Reads one response (with a Content-Length body); `Err` with what came if the connection
/// ends first.
async fn read_one(stream: &mut TcpStream) -> Result<RawResponse, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((response, _)) = parse_response(&buf) {
            if response.header("content-length").is_some() {
                return Ok(response);
            }
        }
        match within("a response", stream.read(&mut chunk)).await {
            Ok(0) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&buf))),
            Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends one request with `Connection: close`; the response, read to EOF.
async fn exchange_and_close(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut stream = connect(addr).await;
    let _ = stream.write_all(request).await;
    let bytes = until_eof(&mut stream).await.unwrap_or_default();
    parse_response(&bytes).map(|(response, _)| response)
}

const UPGRADE: &[u8] =
    b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";

const HOLD_UPGRADE: &[u8] =
    b"GET /hold-upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: held\r\n\r\n";

/// Reads a response head; asserts it is a `101`; returns the bytes after it.
async fn read_101(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = within("the 101", stream.read(&mut chunk))
            .await
            .expect("read the 101");
        assert!(
            n > 0,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(
                buf.starts_with(b"HTTP/1.1 101 "),
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
            return buf[end + 4..].to_vec();
        }
    }
}

/// What a dripping client saw.
struct Dripped {
    /// Body bytes written before the server ended the connection.
    written: usize,
    /// What the server sent.
    received: Vec<u8>,
    /// The server ended the connection (EOF, reset, or a write refused).
    ended: bool,
}

/// Writes one byte every `every` (at most `max` of them) until the server ends the connection.
async fn drip_until_closed(stream: &mut TcpStream, every: Duration, max: usize) -> Dripped {
    let mut dripped = Dripped {
        written: 0,
        received: Vec::new(),
        ended: false,
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut buf = [0u8; 4096];
    within("drip until the server ends the connection", async {
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        dripped.ended = true;
                        return;
                    }
                    Ok(n) => dripped.received.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick() => {
                    if dripped.written == max {
                        return;
                    }
                    if stream.write_all(b"z").await.is_err() {
                        dripped.ended = true;
                        return;
                    }
                    dripped.written += 1;
                }
            }
        }
    })
    .await;
    dripped
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2: frames and a little HPACK, by hand

#[allow(dead_code)]
mod h2raw {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    use super::within;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;

    pub const ACK: u8 = 0x1;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = values
            .iter()
            .flat_map(|(id, value)| {
                let mut entry = id.to_be_bytes().to_vec();
                entry.extend_from_slice(&value.to_be_bytes());
                entry
            })
            .collect();
        frame(SETTINGS, 0, 0, &payload)
    }

    pub fn ping(data: [u8; 8]) -> Vec<u8> {
        frame(PING, 0, 0, &data)
    }

    /// A HEADERS frame with END_HEADERS and END_STREAM: a request without a body.
    pub fn get(stream: u32, fields: &[(&str, &str)]) -> Vec<u8> {
        frame(HEADERS, END_HEADERS | END_STREAM, stream, &block(fields))
    }

    /// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
    fn integer(out: &mut Vec<u8>, first: u8, n: u8, value: usize) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        integer(out, 0x00, 7, s.len()); // no Huffman
        out.extend_from_slice(s.as_bytes());
    }

    /// A header block of literal fields without indexing, new names (RFC 7541 §6.2.2).
    pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0x00);
            string(&mut out, name);
            string(&mut out, value);
        }
        out
    }

    /// Decodes an HPACK integer with an `n`-bit prefix: the value and the bytes it took.
    fn decode_integer(buf: &[u8], n: u8) -> Option<(usize, usize)> {
        let max = (1usize << n) - 1;
        let first = usize::from(*buf.first()?) & max;
        if first < max {
            return Some((first, 1));
        }
        let mut value = max;
        for (i, byte) in buf[1..].iter().enumerate().take(4) {
            value += usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((value, i + 2));
            }
        }
        None
    }

    /// Huffman-coded decimal digits (RFC 7541 Appendix B: `0`-`2` take 5 bits, `3`-`9` 6).
    fn huffman_digits(bytes: &[u8]) -> Option<String> {
        let mut out = String::new();
        let (mut code, mut len) = (0u32, 0u32);
        for byte in bytes {
            for shift in (0..8).rev() {
                code = (code << 1) | u32::from((byte >> shift) & 1);
                len += 1;
                let digit = match (len, code) {
                    (5, 0..=2) => Some(b'0' + code as u8),
                    (6, 0x19..=0x1f) => Some(b'3' + (code - 0x19) as u8),
                    _ => None,
                };
                if let Some(digit) = digit {
                    out.push(char::from(digit));
                    code = 0;
                    len = 0;
                } else if len > 7 {
                    return None;
                }
            }
        }
        // What is left is padding: the most significant bits of EOS, all ones.
        (code == (1 << len) - 1).then_some(out)
    }

    /// The `:status` of a response header block (its first field, as hyper sends it).
    pub fn status_of(block: &[u8]) -> Option<u16> {
        let mut at = 0;
        loop {
            let first = *block.get(at)?;
            if first & 0xe0 == 0x20 {
                // A dynamic table size update.
                at += decode_integer(&block[at..], 5)?.1;
                continue;
            }
            if first & 0x80 != 0 {
                let (index, _) = decode_integer(&block[at..], 7)?;
                return match index {
                    8 => Some(200),
                    9 => Some(204),
                    10 => Some(206),
                    11 => Some(304),
                    12 => Some(400),
                    13 => Some(404),
                    14 => Some(500),
                    _ => None,
                };
            }
            let prefix = if first & 0x40 != 0 { 6 } else { 4 };
            let (name, used) = decode_integer(&block[at..], prefix)?;
            if !(8..=14).contains(&name) {
                return None;
            }
            at += used;
            let huffman = *block.get(at)? & 0x80 != 0;
            let (len, used) = decode_integer(&block[at..], 7)?;
            at += used;
            let value = block.get(at..at + len)?;
            let text = if huffman {
                huffman_digits(value)?
            } else {
                String::from_utf8(value.to_vec()).ok()?
            };
            return text.parse().ok();
        }
    }

    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    /// The reading half of a connection, frame by frame. `next` is cancel-safe.
    pub struct Reader {
        read: OwnedReadHalf,
        buf: Vec<u8>,
    }

    impl Reader {
        /// The next frame; `None` once the server has ended the connection (EOF or reset).
        pub async fn next(&mut self) -> Option<Frame> {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                if self.buf.len() >= 9 {
                    let len = (usize::from(self.buf[0]) << 16)
                        | (usize::from(self.buf[1]) << 8)
                        | usize::from(self.buf[2]);
                    if self.buf.len() >= 9 + len {
                        let head: Vec<u8> = self.buf.drain(..9).collect();
                        let payload = self.buf.drain(..len).collect();
                        return Some(Frame {
                            kind: head[3],
                            flags: head[4],
                            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                                & 0x7fff_ffff,
                            payload,
                        });
                    }
                }
                match self.read.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }

    pub struct Conn {
        pub reader: Reader,
        pub writer: OwnedWriteHalf,
    }

    impl Conn {
        /// Connects, sends the preface and a SETTINGS frame with `values`, waits for the
        /// server's SETTINGS and acknowledges it.
        pub async fn handshake(addr: SocketAddr, values: &[(u16, u32)]) -> Conn {
            let stream = super::connect(addr).await;
            let (read, mut writer) = stream.into_split();
            writer
                .write_all(&[PREFACE, &settings(values)].concat())
                .await
                .unwrap();
            let mut reader = Reader {
                read,
                buf: Vec::new(),
            };
            loop {
                let frame = within("the server's SETTINGS", reader.next())
                    .await
                    .expect("the server ended the connection before its SETTINGS");
                if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                    break;
                }
            }
            writer
                .write_all(&frame(SETTINGS, ACK, 0, &[]))
                .await
                .unwrap();
            Conn { reader, writer }
        }

        pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.writer.write_all(bytes).await
        }

        /// The `:status` of the response on `stream` (RST_STREAM: `None`), skipping other
        /// frames; panics if the connection ends first.
        pub async fn response_status(&mut self, stream: u32) -> Option<u16> {
            loop {
                let frame = within("a response", self.reader.next())
                    .await
                    .expect("the connection ended before the response");
                match frame.kind {
                    HEADERS if frame.stream == stream => {
                        let status = status_of(&frame.payload);
                        assert!(status.is_some(), "undecoded :status in {frame:?}");
                        return status;
                    }
                    RST_STREAM if frame.stream == stream => return None,
                    GOAWAY => panic!("GOAWAY before the response: {frame:?}"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn hpack_status_decoding() {
        assert_eq!(status_of(&[0x88]), Some(200));
        assert_eq!(status_of(&[0x8c]), Some(400));
        // "413" in Huffman: 4 = 011010, 1 = 00001, 3 = 011001, then 7 bits of padding.
        let huffman_413 = [0b0110_1000, 0b0010_1100, 0b1111_1111];
        assert_eq!(huffman_digits(&huffman_413).as_deref(), Some("413"));
        assert_eq!(
            huffman_digits(&[0x68, 0x2c, 0xff, 0xff]),
            None,
            "8 bits of padding"
        );
        // Literal with incremental indexing, name index 8 (`:status`), Huffman value.
        assert_eq!(
            status_of(&[&[0x48, 0x83][..], &huffman_413].concat()),
            Some(413)
        );
        // Literal without indexing, name index 8, plain value.
        assert_eq!(status_of(&[0x08, 0x03, b'4', b'2', b'1']), Some(421));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Requests the crate answers itself count as requests

#[tokio::test]
async fn options_star_health_checks_keep_a_keep_alive_connection_open() {
    let mut options = Options::default();
    options = options.with_http1_timeout(Some(Duration::from_secs(1)));
    let server = run(options).await;
    let mut stream = connect(server.addr).await;
    let started = Instant::now();
    // One health check every half timeout, for five timeouts, on one connection.
    for i in 0..10 {
        stream
            .write_all(b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("request {i} after {:?}: {e}", started.elapsed()));
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = within("the 204", stream.read(&mut chunk))
                .await
                .unwrap_or(0);
            assert!(
                n > 0,
                "health check {i}: the connection was closed after {:?}",
                started.elapsed()
            );
            head.extend_from_slice(&chunk[..n]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 204"),
            "health check {i}: {:?}",
            String::from_utf8_lossy(&head)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stats = server.stats();
    assert_eq!((stats.closed, stats.active), (0, 1), "{stats:?}");
    assert_eq!(
        (stats.idle_timeouts, stats.request_head_timeouts),
        (0, 0),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A request waiting in poll_ready is in service

#[tokio::test]
async fn request_queued_in_poll_ready_is_not_timed_out() {
    let mut options = Options::default();
    options = options.with_http1_timeout(Some(Duration::from_millis(500)));
    let mut server = run_limited(options, 1).await;
    // A takes the only permit and holds it for 4 timeouts.
    let mut a = connect(server.addr).await;
    a.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    within("A's handler runs", server.probe.entered.recv())
        .await
        .unwrap();
    // B's request is complete, and queues in poll_ready behind A.
    let mut b = connect(server.addr).await;
    b.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.probe.release_hold.notify_one();
    let response_a = read_one(&mut a)
        .await
        .unwrap_or_else(|e| panic!("A, the request holding the permit: {e}"));
    assert_eq!(
        (response_a.status, &response_a.body[..]),
        (200, &b"held"[..])
    );
    // B is answered, not closed by a clock while it waited for the permit.
    let response_b = read_one(&mut b)
        .await
        .unwrap_or_else(|e| panic!("B, queued in poll_ready: {e}"));
    assert_eq!((response_b.status, &response_b.body[..]), (200, &b"ok"[..]));
    let stats = server.stats();
    assert_eq!(
        (
            stats.request_head_timeouts,
            stats.idle_timeouts,
            stats.closed
        ),
        (0, 0, 0),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3-4. HTTP/2: a flow-control window held at 0, and PINGs are not activity

#[tokio::test]
async fn http2_window_held_at_zero_is_cut_by_the_response_rate() {
    let mut options = Options::default();
    options = options.with_min_response_rate(Some(MinDataRate::new(240, Duration::from_secs(1))));
    let server = run(options).await;
    let mut conn =
        h2raw::Conn::handshake(server.addr, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    conn.send(&h2raw::get(
        1,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", "/big"),
        ],
    ))
    .await
    .unwrap();
    // The window stays at 0: the server can send the head, never the body.
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut data = 0;
    let ended = tokio::time::timeout(common::LIMIT, async {
        while let Some(frame) = conn.reader.next().await {
            if frame.kind == h2raw::DATA {
                data += frame.payload.len();
            }
            seen.push((frame.kind, frame.flags, frame.stream));
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "still open after {:?}; frames (type, flags, stream): {seen:?}; {:?}",
        started.elapsed(),
        server.stats()
    );
    assert_eq!(data, 0, "DATA sent into a zero window: {seen:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "cut before the grace: {:?}",
        started.elapsed()
    );
    eventually("counted as a response timeout", || {
        server.stats().response_timeouts == 1
    })
    .await;
    let stats = server.stats();
    assert_eq!(
        (stats.idle_timeouts, stats.request_body_timeouts),
        (0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn http2_pings_without_a_stream_are_idle() {
    let mut options = Options::default();
    options = options.with_http2_timeout(Some(Duration::from_secs(1)));
    let server = run(options).await;
    let mut conn = h2raw::Conn::handshake(server.addr, &[]).await;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let (mut pings, mut acks, mut goaway) = (0u32, 0u32, false);
    let ended = within("the server ends the connection", async {
        loop {
            tokio::select! {
                frame = conn.reader.next() => match frame {
                    None => return true,
                    Some(frame) if frame.kind == h2raw::PING && frame.flags & h2raw::ACK != 0 => {
                        acks += 1;
                    }
                    Some(frame) if frame.kind == h2raw::GOAWAY => goaway = true,
                    Some(_) => {}
                },
                _ = tick.tick() => {
                    if pings == 40 {
                        return false; // 8 s of pings: never closed
                    }
                    pings += 1;
                    let mut data = [0u8; 8];
                    data[4..].copy_from_slice(&pings.to_be_bytes());
                    if conn.send(&h2raw::ping(data)).await.is_err() {
                        return true;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        ended,
        "still open after {pings} pings and {:?}; {:?}",
        started.elapsed(),
        server.stats()
    );
    // The pings went on, and were answered, while the idle clock ran.
    assert!(
        pings >= 3 && acks >= 2,
        "pings {pings}, acks {acks}, goaway {goaway}"
    );
    eventually("counted as an idle timeout", || {
        server.stats().idle_timeouts == 1
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Minimum data rates: a dripped request body, a dripped response read

#[tokio::test]
async fn request_body_dripped_below_the_minimum_rate_is_cut() {
    let mut options = Options::default();
    options =
        options.with_min_request_body_rate(Some(MinDataRate::new(100, Duration::from_secs(1))));
    let server = run(options).await;
    let mut stream = connect(server.addr).await;
    stream
        .write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 10000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One byte every 300 ms: progress, but far below 100 bytes/s.
    let dripped = drip_until_closed(&mut stream, Duration::from_millis(300), 30).await;
    assert!(
        dripped.ended,
        "still open after {} bytes and {:?}; {:?}",
        dripped.written,
        started.elapsed(),
        server.stats()
    );
    assert!(
        !dripped.received.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&dripped.received)
    );
    eventually("counted as a request body timeout", || {
        server.stats().request_body_timeouts == 1
    })
    .await;
    let stats = server.stats();
    assert_eq!(
        (stats.idle_timeouts, stats.response_timeouts),
        (0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn response_read_below_the_minimum_rate_is_cut() {
    let mut options = Options::default();
    options = options.with_min_response_rate(Some(MinDataRate::new(1000, Duration::from_secs(1))));
    let mut server = run(options).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = within("connect", socket.connect(server.addr))
        .await
        .unwrap();
    stream
        .write_all(b"GET /huge HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let client = within("the handler runs", server.probe.entered.recv())
        .await
        .unwrap();
    let closed = client.closed();
    tokio::pin!(closed);
    // Ten bytes every 100 ms: 100 bytes/s, a tenth of the minimum.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut got, mut ended) = (0usize, false);
    let mut buf = [0u8; 10];
    for _ in 0..90 {
        tokio::select! {
            _ = &mut closed => {
                ended = true;
                break;
            }
            _ = tick.tick() => match within("a drip read", stream.read(&mut buf)).await {
                Ok(0) | Err(_) => {
                    ended = true;
                    break;
                }
                Ok(n) => got += n,
            },
        }
    }
    assert!(
        ended,
        "still open after reading {got} bytes; {:?}",
        server.stats()
    );
    // What the server had already put in flight arrives; the rest never does.
    let mut rest = Vec::new();
    let _ = within("the rest", stream.read_to_end(&mut rest)).await;
    assert!(
        got + rest.len() < 16 << 20,
        "the whole response arrived: {got} + {}",
        rest.len()
    );
    eventually("counted as a response timeout", || {
        server.stats().response_timeouts == 1
    })
    .await;
    assert_eq!(server.stats().idle_timeouts, 0, "{:?}", server.stats());
}

// ---------------------------------------------------------------------------------------------
// 6. HTTP/1 half-close

#[tokio::test]
async fn complete_request_then_half_close_is_still_answered() {
    let server = run(Options::default()).await;
    let mut stream = connect(server.addr).await;
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap(); // our write side: the server reads EOF
    let bytes = until_eof(&mut stream)
        .await
        .expect("EOF after the response, not a reset");
    let (response, _) = parse_response(&bytes).unwrap_or_else(|| {
        panic!(
            "no complete response: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(response.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        "closed_rd=true closed_wr=false",
        "the handler saw the peer's EOF, and could still write"
    );
}

// ---------------------------------------------------------------------------------------------
// 7-8. Detached connections: their idle clock, and when they count as closed

#[tokio::test]
async fn silent_detached_connection_is_closed_and_its_slot_given_back() {
    let mut options = Options::default();
    options = options.with_detached_timeout(Some(Duration::from_secs(1)));
    options = options.with_connection_limit(2);
    let server = run(options).await;
    let mut active = connect(server.addr).await;
    active.write_all(UPGRADE).await.unwrap();
    assert!(read_101(&mut active).await.is_empty());
    let mut silent = connect(server.addr).await;
    silent.write_all(UPGRADE).await.unwrap();
    assert!(read_101(&mut silent).await.is_empty());
    let started = Instant::now();

    // The active one echoes a byte every 300 ms for 3 s.
    let echo = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        for i in 0..11u8 {
            tick.tick().await;
            let byte = b'a' + i;
            if active.write_all(&[byte]).await.is_err() {
                return Err(format!("write {i} refused"));
            }
            let mut back = [0u8; 1];
            match tokio::time::timeout(common::LIMIT, active.read(&mut back)).await {
                Ok(Ok(1)) if back[0] == byte => {}
                other => return Err(format!("echo {i}: {other:?}")),
            }
        }
        Ok(active)
    });

    // The silent one is closed by the detached clock.
    let rest = until_eof(&mut silent).await;
    assert!(
        rest.as_ref().map_or(true, Vec::is_empty),
        "expected the end, got {rest:?}"
    );
    let silent_closed = started.elapsed();
    assert!(
        silent_closed >= Duration::from_millis(500),
        "closed too early: {silent_closed:?}"
    );
    eventually(
        "the silent client is counted and its slot given back",
        || {
            let stats = server.stats();
            stats.detached_timeouts == 1 && stats.active == 1
        },
    )
    .await;

    // The freed slot serves a new client.
    let response = exchange_and_close(
        server.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.map(|r| r.status), Some(200));

    // The active one was never cut.
    let active = within("the echo client", echo).await.unwrap();
    let mut active = active.unwrap_or_else(|e| panic!("the active detached client was cut: {e}"));
    active.write_all(b"!").await.unwrap();
    let mut back = [0u8; 1];
    within("one more echo", active.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"!");
    let stats = server.stats();
    assert_eq!(stats.detached_timeouts, 1, "{stats:?}");
    assert_eq!(stats.exported, 2, "{stats:?}");
}

#[tokio::test]
async fn closing_a_detached_client_counts_it_closed_only_once_its_io_is_dropped() {
    let mut server = run(Options::default()).await;
    let (release, release_rx) = oneshot::channel();
    *server.probe.release_detached.lock().unwrap() = Some(release_rx);
    let mut stream = connect(server.addr).await;
    stream.write_all(HOLD_UPGRADE).await.unwrap();
    assert!(read_101(&mut stream).await.is_empty());
    let client = within("the detached connection is held", server.probe.held.recv())
        .await
        .unwrap();
    let closes = Arc::new(AtomicUsize::new(0));
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let c = closes.clone();
    client.on_close(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        let _ = closed_tx.send(());
    });
    assert_eq!(server.stats().active, 1);

    let asked = Instant::now();
    assert!(server.handle.close(client.id()));
    // The peer sees the end at once, though the task still holds the detached connection.
    let rest = until_eof(&mut stream).await;
    assert!(
        rest.as_ref().map_or(true, Vec::is_empty),
        "expected the end, got {rest:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the peer saw the end only after {:?}",
        asked.elapsed()
    );
    // Not closed yet as far as the server is concerned: the socket is still held. (A moment
    // for a wrong implementation to run its callbacks early.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(closes.load(Ordering::SeqCst), 0, "on_close ran at close()");
    let stats = server.stats();
    assert_eq!((stats.closed, stats.active), (0, 1), "{stats:?}");

    // The task drops it: now the client is closed, once.
    release.send(()).unwrap();
    within(
        "the detached connection is dropped",
        server.probe.dropped.recv(),
    )
    .await
    .unwrap();
    within("on_close", closed_rx.recv()).await.unwrap();
    eventually("counted closed and the slot given back", || {
        let stats = server.stats();
        stats.closed == 1 && stats.active == 0
    })
    .await;
    assert_eq!(closes.load(Ordering::SeqCst), 1);
    assert!(client.is_closed());
}

#[tokio::test]
async fn a_101_to_a_request_without_upgrade_is_not_an_export() {
    let mut server = run(Options::default()).await;
    let mut stream = connect(server.addr).await;
    stream
        .write_all(b"GET /switch HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let client = within("the handler runs", server.probe.entered.recv())
        .await
        .unwrap();
    // Whatever the server makes of it (a response head, or the end), then we leave.
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match within("a response or the end", stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    drop(stream);
    eventually("the client is closed", || {
        let stats = server.stats();
        stats.closed == 1 && stats.active == 0
    })
    .await;
    assert!(
        !client.is_exported(),
        "exported after a 101 to a request without Upgrade; the server sent {:?}",
        String::from_utf8_lossy(&got)
    );
    let stats = server.stats();
    assert_eq!(stats.exported, 0, "{stats:?}");
}

// ---------------------------------------------------------------------------------------------
// 9. Host validation

#[tokio::test]
async fn invalid_host_values_are_refused_over_http1() {
    let server = run(Options::default()).await;
    for host in ["a,b", "x y", "a@b", "%00", "[::1", "x:abc"] {
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let response = exchange_and_close(server.addr, request.as_bytes()).await;
        assert_eq!(response.map(|r| r.status), Some(400), "Host: {host}");
    }
    for host in [
        "a.example",
        "a.example:8080",
        "127.0.0.1:1",
        "[::1]:80",
        "[::1]",
    ] {
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let response = exchange_and_close(server.addr, request.as_bytes()).await;
        assert_eq!(response.map(|r| r.status), Some(200), "Host: {host}");
    }
}

#[tokio::test]
async fn authority_and_host_must_agree_over_http2() {
    let server = run(Options::default()).await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: [Case<'_>; 3] = [
        (
            ":authority a.example, host b.example",
            &[(":authority", "a.example"), ("host", "b.example")],
            400,
        ),
        (
            "two host headers",
            &[("host", "a.example"), ("host", "a.example")],
            400,
        ),
        (
            ":authority and host the same",
            &[(":authority", "a.example"), ("host", "a.example")],
            200,
        ),
    ];
    for (case, fields, expected) in cases {
        let mut conn = h2raw::Conn::handshake(server.addr, &[]).await;
        let mut all = vec![(":method", "GET"), (":scheme", "http"), (":path", "/")];
        all.extend_from_slice(fields);
        conn.send(&h2raw::get(1, &all)).await.unwrap();
        assert_eq!(conn.response_status(1).await, Some(expected), "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// 10. 413 by Content-Length

#[tokio::test]
async fn oversize_content_length_is_answered_413_then_closed() {
    let server = run(Options::default()).await;
    let mut stream = connect(server.addr).await;
    // Over the 128 KiB default, and none of the body sent.
    stream
        .write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 413);
    assert!(
        response
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close")),
        "{response:?}"
    );
    let rest = until_eof(&mut stream)
        .await
        .expect("the server closes: EOF, not a reset");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    eventually("the client is closed", || server.stats().closed == 1).await;
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_answered_then_closed() {
    // Chunked, so no Content-Length tells the size in advance: the handler's read fails with
    // LengthLimitError, it answers (400 here), and the crate adds `Connection: close` because
    // the rest of the body is never read.
    let mut options = Options::default();
    options = options.with_body_size_limit(1024);
    let server = run(options).await;
    let mut stream = connect(server.addr).await;
    stream
        .write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("800\r\n{}\r\n", "z".repeat(0x800));
    stream.write_all(chunk.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 400);
    assert!(
        response
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close")),
        "{response:?}"
    );
    let _ = until_eof(&mut stream).await;
    eventually("the client is closed", || server.stats().closed == 1).await;
}

#[tokio::test]
async fn a_fast_start_does_not_buy_a_long_stall() {
    // 2000 bytes sent while the handler waits earn 20 s at 100 B/s; the clock banks at most
    // four graces (2 s), so the stall that follows is cut after about two seconds, not twenty.
    let mut options = Options::default();
    options = options.with_min_request_body_rate(MinDataRate::new(100, Duration::from_millis(500)));
    let server = run(options).await;
    let mut stream = connect(server.addr).await;
    stream
        .write_all(b"POST /collect HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    // Scenario time, inside the grace: the handler is waiting for the body by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(&[b'z'; 2000]).await.unwrap();
    let started = Instant::now();
    let rest = within("cut after the stall", until_eof(&mut stream)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(6),
        "the stall lasted {took:?} before the cut"
    );
    assert!(!rest.unwrap_or_default().starts_with(b"HTTP/1.1 200"));
    eventually("counted as a request body timeout", || {
        server.stats().request_body_timeouts == 1
    })
    .await;
}

#[tokio::test]
async fn http2_pings_do_not_keep_a_zero_window_response_alive() {
    // The window stays at 0 and the peer sends a PING every 40 ms: the PING acknowledgements
    // alone would be 425 bytes/s of socket writes, above the 100 B/s asked. Control frames
    // are not progress: the response clock still runs out.
    let mut options = Options::default();
    options = options.with_min_response_rate(MinDataRate::new(100, Duration::from_secs(1)));
    let server = run(options).await;
    let mut conn =
        h2raw::Conn::handshake(server.addr, &[(h2raw::SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    conn.send(&h2raw::get(
        1,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", "/big"),
        ],
    ))
    .await
    .unwrap();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let mut pings = 0u32;
    let ended = within("the server ends the connection", async {
        loop {
            tokio::select! {
                frame = conn.reader.next() => if frame.is_none() { return true },
                _ = tick.tick() => {
                    if pings == 200 {
                        return false; // 8 s of pings: never cut
                    }
                    pings += 1;
                    let mut data = [0u8; 8];
                    data[4..].copy_from_slice(&pings.to_be_bytes());
                    if conn.send(&h2raw::ping(data)).await.is_err() {
                        return true;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        ended,
        "still open after {pings} pings and {:?}; {:?}",
        started.elapsed(),
        server.stats()
    );
    eventually("counted as a response timeout", || {
        server.stats().response_timeouts == 1
    })
    .await;
}

#[tokio::test]
async fn eof_inside_a_body_ends_a_connection_of_ones_own_loop() {
    // Under a bare ClientService nothing counts request bodies, so an EOF there must not be
    // taken for a half-close: hyper sees it, the body fails, the connection ends.
    use hyper::service::service_fn;
    use hyper_remote_client::{ClientIo, ClientService};
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let io = ClientIo::tcp(stream);
        let client = io.client().clone();
        let service = ClientService::new(
            service_fn(|req: Request<hyper::body::Incoming>| async move {
                let read = req.into_body().collect().await.is_ok();
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(format!(
                    "read={read}"
                )))))
            }),
            client.clone(),
        );
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
        let _ = done_tx.send(client);
    });
    let mut stream = connect(addr).await;
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let client = within("the connection ends", done.recv()).await.unwrap();
    within("the client closes", client.closed()).await;
    assert_eq!(client.pending_responses(), 0);
}
