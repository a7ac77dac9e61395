//! The server loop: admission limits with real connections, the slot given back, the live
//! registry, counters, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_remote_client::{ClientInfo, Options, RequestBody, Server, ServerHandle};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(10);

mod common;

/// `/` answers at once with the client id; `/slow?ms=N` after N ms; `/hang` never; `/started`
/// tells the test (through `started`) that it runs, then answers after `ms`.
async fn handler(
    req: Request<RequestBody>,
    started: mpsc::UnboundedSender<u64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = req.extensions().get::<ClientInfo>().unwrap().clone();
    let ms = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    match req.uri().path() {
        "/hang" => {
            let _ = started.send(client.id().get());
            std::future::pending::<()>().await;
        }
        "/slow" => {
            let _ = started.send(client.id().get());
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        _ => {}
    }
    Ok(Response::new(Full::new(Bytes::from(
        client.id().get().to_string(),
    ))))
}

struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    started: mpsc::UnboundedReceiver<u64>,
    done: JoinHandle<()>,
}

async fn run(options: Options) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(options).listener(listener);
    let handle = server.handle();
    let (started_tx, started) = mpsc::unbounded_channel();
    let service = tower::service_fn(move |req| handler(req, started_tx.clone()));
    let done = tokio::spawn(server.serve(service));
    Running {
        addr,
        handle,
        started,
        done,
    }
}

/// A connection from `source` (any 127.0.0.0/8 address) to `addr`.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends one HTTP/1.1 request on a raw stream and returns the whole response text, or `None`
/// if the connection ended without one.
async fn request(stream: &mut TcpStream, path: &str) -> Option<String> {
    let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(text);
            }
        }
    }
}

/// `true` if the peer ended the connection (EOF or reset) before sending anything.
async fn ends_without_response(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    match tokio::time::timeout(LIMIT, stream.read_to_end(&mut buf))
        .await
        .unwrap()
    {
        Ok(_) => buf.is_empty(),
        Err(_) => true,
    }
}

/// Waits for an observable condition of the server, bounded.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn per_ip_limit_counts_by_source_address_and_gives_slots_back() {
    let mut options = Options::default();
    options = options.with_connections_per_ip(2);
    options = options.with_per_ip_limit_on_loopback(true);
    let server = run(options).await;

    let mut a1 = connect_from([127, 0, 0, 2], server.addr).await;
    let mut a2 = connect_from([127, 0, 0, 2], server.addr).await;
    assert!(request(&mut a1, "/").await.is_some());
    assert!(request(&mut a2, "/").await.is_some());
    // A third from the same address is closed at once, before any byte is read.
    let mut a3 = connect_from([127, 0, 0, 2], server.addr).await;
    assert!(ends_without_response(&mut a3).await);
    assert_eq!(server.handle.stats().rejected_per_ip_limit, 1);
    // Another address is not affected.
    let mut b1 = connect_from([127, 0, 0, 3], server.addr).await;
    assert!(request(&mut b1, "/").await.is_some());

    // One of the first two closes: its slot comes back.
    drop(a1);
    eventually("the slot is given back", || {
        server.handle.stats().closed == 1
    })
    .await;
    let mut a4 = connect_from([127, 0, 0, 2], server.addr).await;
    assert!(request(&mut a4, "/").await.is_some());
    assert_eq!(server.handle.stats().rejected_per_ip_limit, 1);
    assert_eq!(server.handle.clients().len(), 3);
}

#[tokio::test]
async fn loopback_is_exempt_from_the_per_ip_limit_by_default() {
    let mut options = Options::default();
    options = options.with_connections_per_ip(1);
    let server = run(options).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert!(request(&mut stream, "/").await.is_some());
        streams.push(stream);
    }
    assert_eq!(server.handle.stats().rejected_per_ip_limit, 0);
}

#[tokio::test]
async fn connection_limit_rejects_and_recovers() {
    let mut options = Options::default();
    options = options.with_connection_limit(2);
    let server = run(options).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert!(request(&mut first, "/").await.is_some());
    assert!(request(&mut second, "/").await.is_some());
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert!(ends_without_response(&mut third).await);
    let stats = server.handle.stats();
    assert_eq!(
        (
            stats.rejected_connection_limit,
            stats.active,
            stats.accepted
        ),
        (1, 2, 3)
    );
    drop(first);
    eventually("a slot is free", || server.handle.stats().active == 1).await;
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    assert!(request(&mut fourth, "/").await.is_some());
}

#[tokio::test]
async fn registry_lists_looks_up_and_closes_clients() {
    let server = run(Options::default()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let body = request(&mut stream, "/").await.unwrap();
    let id: u64 = body.rsplit("\r\n\r\n").next().unwrap().parse().unwrap();
    let clients = server.handle.clients();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].id().get(), id);
    let client = server.handle.client(id.into()).unwrap();
    assert_eq!(
        client.remote_port(),
        Some(stream.local_addr().unwrap().port())
    );

    assert!(server.handle.close(id.into()));
    assert!(ends_without_response(&mut stream).await);
    assert!(server.handle.client(id.into()).is_none());
    assert!(!server.handle.close(id.into()), "already gone");
    assert_eq!(server.handle.stats().closed, 1);
}

#[tokio::test]
async fn shutdown_waits_on_unfinished_responses() {
    let mut server = run(Options::default()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let slow = tokio::spawn(async move { request(&mut stream, "/slow?ms=500").await });
    tokio::time::timeout(LIMIT, server.started.recv())
        .await
        .unwrap();
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(3)));
    // The response in flight when the shutdown started is still delivered in full.
    let response = tokio::time::timeout(LIMIT, slow).await.unwrap().unwrap();
    assert!(response.unwrap().starts_with("HTTP/1.1 200 OK"));
    tokio::time::timeout(LIMIT, server.done)
        .await
        .unwrap()
        .unwrap();
    // Stopped accepting.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn idle_keep_alive_connections_close_at_once_and_hung_ones_at_the_deadline() {
    let mut options = Options::default();
    options = options.with_shutdown_timeout(Duration::from_millis(300));
    let mut server = run(options).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert!(request(&mut idle, "/").await.is_some());
    let mut hung = TcpStream::connect(server.addr).await.unwrap();
    hung.write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, server.started.recv())
        .await
        .unwrap();

    let started = Instant::now();
    server
        .handle
        .graceful_shutdown(Some(Duration::from_millis(300)));
    // The idle keep-alive connection is closed at once, not at the deadline.
    assert!(ends_without_response(&mut idle).await);
    let idle_closed = started.elapsed();
    // The hung one outlives the deadline and is force-closed, without a response.
    assert!(ends_without_response(&mut hung).await);
    let hung_closed = started.elapsed();
    assert!(
        idle_closed < hung_closed,
        "{idle_closed:?} vs {hung_closed:?}"
    );
    assert!(hung_closed >= Duration::from_millis(300));
    tokio::time::timeout(LIMIT, server.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.handle.stats().active, 0);
    assert!(server.handle.clients().is_empty());
}

#[tokio::test]
async fn http2_shutdown_finishes_the_stream_in_flight_then_ends_the_connection() {
    let mut server = run(Options::default()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let in_flight = sender.send_request(
        Request::get("http://x/slow?ms=300")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    );
    let in_flight = tokio::spawn(in_flight);
    tokio::time::timeout(LIMIT, server.started.recv())
        .await
        .unwrap();
    server
        .handle
        .graceful_shutdown(Some(Duration::from_secs(3)));
    let response = tokio::time::timeout(LIMIT, in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty());
    // GOAWAY: the connection ends once the stream is done.
    tokio::time::timeout(LIMIT, conn)
        .await
        .unwrap()
        .unwrap()
        .ok();
    tokio::time::timeout(LIMIT, server.done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn exported_clients_count_until_closed_and_are_closed_at_the_deadline() {
    use hyper_remote_client::detach;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut options = Options::default();
    options = options.with_shutdown_timeout(Duration::from_millis(200));
    let server = Server::new(options).listener(listener);
    let handle = server.handle();
    let (held_tx, mut held) = mpsc::unbounded_channel();
    let service = tower::service_fn(move |mut req: Request<RequestBody>| {
        let on_detach = detach(&mut req);
        let held_tx = held_tx.clone();
        tokio::spawn(async move {
            // Hold the detached connection without reading it.
            if let Ok(conn) = on_detach.await {
                let _ = held_tx.send(conn);
            }
        });
        async {
            let mut response = Response::new(Empty::<Bytes>::new());
            *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            response
                .headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            response
                .headers_mut()
                .insert("upgrade", "x".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let done = tokio::spawn(server.serve(service));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n")
        .await
        .unwrap();
    let _conn = tokio::time::timeout(LIMIT, held.recv())
        .await
        .unwrap()
        .unwrap();
    eventually("the export is counted", || handle.stats().exported == 1).await;
    let stats = handle.stats();
    assert_eq!((stats.active, stats.exported_active), (1, 1));
    assert_eq!(handle.clients().len(), 1);
    assert!(handle.clients()[0].is_exported());

    handle.graceful_shutdown(Some(Duration::from_millis(200)));
    // Forced at the deadline: the peer sees the end though the detached I/O is still held.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // Its socket stays open until the detached I/O is dropped, and so does its slot.
    assert_eq!(handle.stats().active, 1);
    drop(_conn);
    tokio::time::timeout(LIMIT, done).await.unwrap().unwrap();
    let stats = handle.stats();
    assert_eq!(
        (stats.active, stats.exported_active, stats.closed),
        (0, 0, 1)
    );
}

#[tokio::test]
async fn registry_and_counters_exact_after_2000_abrupt_disconnects() {
    let server = run(Options::default()).await;
    let stages: [&[u8]; 4] = [
        b"",
        b"GET / HT",
        b"POST /slow?ms=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\npartial",
        b"GET /slow?ms=50 HTTP/1.1\r\nhost: x\r\n\r\n",
    ];
    for batch in 0..20 {
        let mut streams = Vec::with_capacity(100);
        for i in 0..100 {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            let _ = stream.write_all(stages[(batch + i) % stages.len()]).await;
            streams.push(stream);
        }
        // Drop them all at once, mid-whatever; some with a reset (linger 0).
        for (i, stream) in streams.into_iter().enumerate() {
            if i % 2 == 0 {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
            drop(stream);
        }
    }
    eventually("every client closed", || {
        let stats = server.handle.stats();
        stats.closed == 2000 && stats.active == 0
    })
    .await;
    let stats = server.handle.stats();
    assert_eq!(stats.accepted, 2000);
    assert!(server.handle.clients().is_empty());
    // And the server still serves.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert!(request(&mut stream, "/").await.is_some());
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_listener_counts_failed_and_stalled_handshakes() {
    use hyper_remote_client::Listener;
    let (acceptor, _) = common::tls::self_signed();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut options = Options::default();
    options = options.with_tls_setup_timeout(Some(Duration::from_millis(200)));
    let server = Server::new(options).listener(Listener::tcp(listener).with_tls(acceptor));
    let handle = server.handle();
    let (started, _rx) = mpsc::unbounded_channel();
    tokio::spawn(server.serve(tower::service_fn(move |req| handler(req, started.clone()))));

    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(LIMIT, garbage.read_to_end(&mut sink))
        .await
        .unwrap();
    let _ = tokio::time::timeout(LIMIT, stalled.read_to_end(&mut sink))
        .await
        .unwrap();
    eventually("both handshakes counted", || {
        let stats = handle.stats();
        stats.tls_handshake_failures == 1 && stats.tls_handshake_timeouts == 1 && stats.active == 0
    })
    .await;
    assert!(
        handle.clients().is_empty(),
        "a failed handshake never becomes a client"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn unix_listener_serves_and_is_exempt_from_the_per_ip_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut options = Options::default();
    options = options.with_connections_per_ip(1);
    options = options.with_per_ip_limit_on_loopback(true);
    let server = Server::new(options).listener(tokio::net::UnixListener::bind(&path).unwrap());
    let handle = server.handle();
    let (started, _rx) = mpsc::unbounded_channel();
    tokio::spawn(server.serve(tower::service_fn(move |req| handler(req, started.clone()))));
    let mut senders = Vec::new();
    for _ in 0..3 {
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender
            .send_request(
                Request::get("/")
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        senders.push(sender);
    }
    assert_eq!(handle.clients().len(), 3);
    assert!(handle.clients().iter().all(ClientInfo::is_unix));
    assert_eq!(handle.stats().rejected_per_ip_limit, 0);
}
