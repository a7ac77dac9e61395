//! Shared harness for the integration tests: a real loopback listener serving every accepted
//! connection with `RemoteClient::start`, plus small client helpers (hyper HTTP/1.1 and h2c
//! clients, raw TCP).
#![allow(dead_code)]

pub mod example;
// Not gated: tests/inspector.rs, one of its two users, builds on every platform and feature set
// (tests/inspector_upgrade.rs is gated itself); std only, so it builds in every test binary.
pub mod inspector;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_remote_client::{
    driver::DefaultHttpDriverFactory,
    layer::{Handler, HandlerBody},
    ClientInfo, CloseReason, Options, RemoteClient,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Upper bound for anything that could hang.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {LIMIT:?}: {what}"),
    }
}

/// Polls `cond` every 10 ms for up to 5 s; fails the test if it never holds.
/// Only for observable state that has no event to await.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if cond() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition never held within 5 s: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running test server.
pub struct Harness {
    /// The listener's address (127.0.0.1:port).
    pub addr: SocketAddr,
    pub options: Arc<Options>,
    clients: mpsc::UnboundedReceiver<ClientInfo>,
    reasons: mpsc::UnboundedReceiver<(u64, CloseReason)>,
    accept: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Harness {
    /// The server-side handle of the next accepted connection.
    pub async fn next_client(&mut self) -> ClientInfo {
        within("next accepted client", self.clients.recv())
            .await
            .expect("accept loop ended")
    }

    /// The next recorded `(client id, CloseReason)`.
    pub async fn next_reason(&mut self) -> (u64, CloseReason) {
        within("next close reason", self.reasons.recv())
            .await
            .expect("accept loop ended")
    }

    /// The `CloseReason` of client `id` (skipping other connections' reasons).
    pub async fn reason_of(&mut self, id: u64) -> CloseReason {
        for _ in 0..10_000 {
            let (got, reason) = self.next_reason().await;
            if got == id {
                return reason;
            }
        }
        panic!("no close reason for client {id}");
    }

    /// A client id was accepted but nothing is left in the queue.
    pub fn try_next_client(&mut self) -> Option<ClientInfo> {
        self.clients.try_recv().ok()
    }
}

/// Serves `service` on 127.0.0.1:0 with `options`; every accepted connection is wrapped with
/// `RemoteClient::tcp`, its `ClientInfo` is sent to the harness, and its `CloseReason` recorded.
pub async fn serve<S, B>(options: Options, service: S) -> Harness
where
    S: Handler<B>,
    B: HandlerBody,
{
    let options = Arc::new(options);
    let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let (clients_tx, clients) = mpsc::unbounded_channel();
    let (reasons_tx, reasons) = mpsc::unbounded_channel();
    let opts = options.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let client = RemoteClient::tcp(stream, opts.clone()).expect("RemoteClient::tcp");
            let info = client.client().clone();
            let _ = clients_tx.send(info.clone());
            let service = service.clone();
            let drivers = drivers.clone();
            let reasons_tx = reasons_tx.clone();
            tokio::spawn(async move {
                let reason = client.start(&*drivers, service).await;
                let _ = reasons_tx.send((info.id().get(), reason));
            });
        }
    });
    Harness {
        addr,
        options,
        clients,
        reasons,
        accept,
    }
}

pub type HandlerResult = Result<Response<Full<Bytes>>, Infallible>;

/// A 200 response with `body`.
pub fn ok(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::new(Full::new(body.into()))
}

/// A oneshot receiver that completes when `client` closes (its `on_close` callback ran).
pub fn closed_signal(client: &ClientInfo) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    client.on_close(move |_| {
        let _ = tx.send(());
    });
    rx
}

/// Waits for the `on_close` signal from [`closed_signal`].
pub async fn wait_closed(what: &str, rx: oneshot::Receiver<()>) {
    within(what, rx)
        .await
        .expect("on_close callback dropped without running");
}

// ---------------------------------------------------------------------------------------------
// hyper clients

pub struct H1Client {
    pub sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub local: SocketAddr,
    pub conn: JoinHandle<Result<(), hyper::Error>>,
}

pub async fn h1_client(addr: SocketAddr) -> H1Client {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let local = stream.local_addr().unwrap();
    let (sender, conn) = within(
        "h1 handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .expect("h1 handshake");
    let conn = tokio::spawn(conn);
    H1Client {
        sender,
        local,
        conn,
    }
}

pub struct H2Client {
    pub sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    pub local: SocketAddr,
    pub conn: JoinHandle<Result<(), hyper::Error>>,
}

pub async fn h2_client(addr: SocketAddr) -> H2Client {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let local = stream.local_addr().unwrap();
    let (sender, conn) = within(
        "h2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    H2Client {
        sender,
        local,
        conn,
    }
}

/// An HTTP/1.1 request (origin form, with Host).
pub fn h1_req(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .body(Full::new(body.into()))
        .unwrap()
}

/// An HTTP/2 request (absolute URI).
pub fn h2_req(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(body.into()))
        .unwrap()
}

/// Collects a response body.
pub async fn body_of(resp: Response<Incoming>) -> Bytes {
    within("response body", resp.into_body().collect())
        .await
        .expect("response body")
        .to_bytes()
}

// ---------------------------------------------------------------------------------------------
// raw TCP

pub async fn connect(addr: SocketAddr) -> TcpStream {
    within("connect", TcpStream::connect(addr))
        .await
        .expect("connect")
}

/// Reads until EOF (or a connection reset, which is reported as `Err`).
pub async fn read_to_eof(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    within("read to EOF", stream.read_to_end(&mut out)).await?;
    Ok(out)
}

/// Writes `bytes` and reads the answer to EOF.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr).await;
    within("write", stream.write_all(bytes))
        .await
        .expect("write");
    read_to_eof(&mut stream).await.expect("read to EOF")
}

/// A parsed HTTP/1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response from the front of `bytes` (Content-Length or no body; chunked bodies
/// are returned undecoded up to the terminating chunk). Returns the response and the rest.
pub fn parse_response(bytes: &[u8]) -> Option<(RawResponse, usize)> {
    let head_end = find(bytes, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &bytes[head_end..];
    let used = if status == 204 || status == 304 || (100..200).contains(&status) {
        0
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().ok()?;
        if rest.len() < len {
            return None;
        }
        resp.body = rest[..len].to_vec();
        len
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let end = find(rest, b"0\r\n\r\n")? + 5;
        resp.body = rest[..end].to_vec();
        end
    } else {
        resp.body = rest.to_vec();
        rest.len()
    };
    Some((resp, head_end + used))
}

/// Reads one complete response (head and Content-Length/chunked body) from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    for _ in 0..100_000 {
        if let Some((resp, _)) = parse_response(&buf) {
            if resp.header("content-length").is_some()
                || resp.header("transfer-encoding").is_some()
                || resp.status == 204
            {
                return resp;
            }
        }
        let n = within("read response", stream.read(&mut chunk))
            .await
            .expect("read");
        if n == 0 {
            return parse_response(&buf)
                .unwrap_or_else(|| {
                    panic!(
                        "EOF before a full response: {:?}",
                        String::from_utf8_lossy(&buf)
                    )
                })
                .0;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("response never completed");
}

// ---------------------------------------------------------------------------------------------
// bodies

/// A response body fed from an mpsc channel: each message is one data frame; the body ends
/// when every sender is dropped.
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
}

impl ChannelBody {
    pub fn new() -> (mpsc::UnboundedSender<Bytes>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}
