//! The connection's `tracing` span: a handler's log lines carry the client id, over HTTP/1.1,
//! HTTP/2 (whose streams hyper runs on tasks of their own) and TLS.
//!
//! Each test runs on a `current_thread` runtime with a subscriber set as the thread's default:
//! every task of the test (server, connections, HTTP/2 streams, clients) runs on that thread,
//! so every line is captured, and the tests of this binary do not see each other's lines.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use http::Request;
use hyper_remote_client::{ClientInfo, Options, RequestBody, Server};
use tokio::net::TcpListener;
use tracing_subscriber::fmt::MakeWriter;

mod common;
use common::*;

/// Log output, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The captured line that contains `needle`.
    fn line_with(&self, needle: &str) -> String {
        let text = self.text();
        let mut lines = text.lines().filter(|line| line.contains(needle));
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"));
        assert!(lines.next().is_none(), "two lines with {needle:?}:\n{text}");
        line.to_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures INFO lines (the level of the connection span, and of the handler's line) on this
/// thread until the guard drops.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

/// Logs one line naming the request's path, and answers the client's id. A path that starts
/// with `/wait` yields once first (over HTTP/2, the stream then goes on in a task of its own).
async fn logging_handler(req: Request<RequestBody>) -> HandlerResult {
    let client = req.extensions().get::<ClientInfo>().unwrap().clone();
    if req.uri().path().starts_with("/wait") {
        tokio::task::yield_now().await;
    }
    tracing::info!(path = req.uri().path(), "handler ran");
    Ok(ok(client.id().to_string()))
}

#[tokio::test]
async fn a_handlers_log_line_carries_its_connection_over_http1_and_http2() {
    let (logs, _guard) = capture();
    let harness = serve(Options::default(), tower::service_fn(logging_handler)).await;
    let addr = harness.addr;

    let mut h1 = h1_client(addr).await;
    let response = h1.sender.send_request(h1_req("GET", "/one", "")).await;
    let id1 = body_of(response.unwrap()).await;
    let mut h2 = h2_client(addr).await;
    let response = h2
        .sender
        .send_request(h2_req(addr, "GET", "/two", ""))
        .await;
    let id2 = body_of(response.unwrap()).await;
    let response = h2
        .sender
        .send_request(h2_req(addr, "GET", "/wait-three", ""))
        .await;
    assert_eq!(body_of(response.unwrap()).await, id2);
    let (id1, id2) = (String::from_utf8_lossy(&id1), String::from_utf8_lossy(&id2));
    assert_ne!(id1, id2);

    let line = logs.line_with("path=\"/one\"");
    assert!(line.contains(&format!("client{{id={id1} ")), "{line}");
    assert!(line.contains(&format!("remote={}", h1.local)), "{line}");
    assert!(line.contains(&format!("local={addr}")), "{line}");
    assert!(line.contains("protocol=\"http/1.1\""), "{line}");
    // An HTTP/2 stream answered on the connection's task, and one that waited and went on in
    // a task of its own: in the connection's span both.
    for path in ["/two", "/wait-three"] {
        let line = logs.line_with(&format!("path=\"{path}\""));
        assert!(line.contains(&format!("client{{id={id2} ")), "{line}");
        assert!(line.contains(&format!("remote={}", h2.local)), "{line}");
        assert!(line.contains("protocol=\"h2\""), "{line}");
    }
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn over_tls_the_span_names_the_version_and_alpn() {
    use hyper_remote_client::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (logs, _guard) = capture();
    let (acceptor, connector) = common::tls::self_signed();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        Server::new(Options::default()).listener(Listener::tcp(listener).with_tls(acceptor));
    let handle = server.handle();
    tokio::spawn(server.serve(tower::service_fn(logging_handler)));

    let tcp = connect(addr).await;
    let mut tls = within(
        "TLS handshake",
        connector.connect(common::tls::localhost(), tcp),
    )
    .await
    .unwrap();
    tls.write_all(b"GET /tls HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    within("response", tls.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    let id = response.rsplit("\r\n\r\n").next().unwrap();

    let line = logs.line_with("path=\"/tls\"");
    assert!(line.contains(&format!("client{{id={id} ")), "{line}");
    assert!(line.contains("tls=\"TLSv1.3\""), "{line}");
    // This client offered no ALPN: the span has no `alpn` field.
    assert!(!line.contains("alpn="), "{line}");
    handle.shutdown();
}

#[tokio::test]
async fn server_events_are_in_the_connections_span_too() {
    let (logs, _guard) = capture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(Options::default()).listener(listener);
    let handle = server.handle();
    tokio::spawn(
        server.serve(tower::service_fn(|_: Request<RequestBody>| async {
            tracing::info!("served by Server");
            Ok::<_, Infallible>(ok("hi"))
        })),
    );
    let reply = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    let line = logs.line_with("served by Server");
    assert!(line.contains("client{id="), "{line}");
    // One span, not the server's and `RemoteClient::start`'s nested.
    assert_eq!(line.matches("client{").count(), 1, "{line}");
    handle.shutdown();
}
