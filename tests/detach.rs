//! Detach: the connection handed over after an HTTP/1 upgrade, with is_exported, close and
//! on_close still exact; HTTP/2 refuses with a clear error; a real WebSocket client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_remote_client::{
    detach, driver::DefaultHttpDriverFactory, ClientInfo, DetachError, Detached, Options,
    RemoteClient, RequestBody, Status,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

mod common;
use common::example::Example;

/// What a test server reports: each client when accepted, each `on_close` (with its count so
/// far for that client), and each detached connection.
struct Server {
    addr: SocketAddr,
    clients: mpsc::UnboundedReceiver<ClientInfo>,
    closed: mpsc::UnboundedReceiver<(u64, usize)>,
    detached: mpsc::UnboundedReceiver<Result<Detached, DetachError>>,
}

#[derive(Clone, Copy)]
enum Mode {
    /// Echo every byte on the detached connection until the peer closes it.
    Echo,
    /// Hand the detached connection to the test.
    Hand,
}

async fn serve(mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = Arc::new(Options::default());
    let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
    let (clients_tx, clients) = mpsc::unbounded_channel();
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let (detached_tx, detached) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let client = RemoteClient::tcp(stream, options.clone()).unwrap();
            let count = Arc::new(AtomicUsize::new(0));
            let closed_tx = closed_tx.clone();
            client.client().on_close(move |client| {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = closed_tx.send((client.id().get(), n));
            });
            let _ = clients_tx.send(client.client().clone());
            let (drivers, detached_tx) = (drivers.clone(), detached_tx.clone());
            tokio::spawn(async move {
                let service = tower::service_fn(move |mut req: Request<RequestBody>| {
                    let detached_tx = detached_tx.clone();
                    async move {
                        let on_detach = detach(&mut req);
                        tokio::spawn(async move {
                            let result = on_detach.await;
                            match (mode, result) {
                                (Mode::Echo, Ok(conn)) => {
                                    let (mut from, mut to) = tokio::io::split(conn);
                                    let _ = tokio::io::copy(&mut from, &mut to).await;
                                }
                                (_, result) => {
                                    let _ = detached_tx.send(result);
                                }
                            }
                        });
                        let mut response = Response::new(Empty::<Bytes>::new());
                        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        response
                            .headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        response
                            .headers_mut()
                            .insert("upgrade", "echo".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                client.start(&*drivers, service).await;
            });
        }
    });
    Server {
        addr,
        clients,
        closed,
        detached,
    }
}

const UPGRADE: &[u8] =
    b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";

/// Reads the 101 head; returns whatever came after it.
async fn read_101(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
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

async fn read_exactly(stream: &mut TcpStream, mut already: Vec<u8>, len: usize) -> Vec<u8> {
    let mut chunk = [0u8; 1024];
    while already.len() < len {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&already));
        already.extend_from_slice(&chunk[..n]);
    }
    already
}

async fn expect_eof(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(LIMIT, stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        read.is_err() || rest.is_empty(),
        "expected EOF, got {rest:?}"
    );
}

#[tokio::test]
async fn echo_upgrade_including_bytes_sent_with_the_head_and_on_close_once() {
    let mut server = serve(Mode::Echo).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // The first bytes of the new protocol travel in the same write as the request head.
    let mut first = UPGRADE.to_vec();
    first.extend_from_slice(b"early bytes|");
    stream.write_all(&first).await.unwrap();
    let after = read_101(&mut stream).await;
    let echoed = read_exactly(&mut stream, after, 12).await;
    assert_eq!(echoed, b"early bytes|");

    let client = server.clients.recv().await.unwrap();
    assert!(client.is_exported());
    assert_eq!(
        client.status(),
        Status::OPEN,
        "still open after the upgrade"
    );

    stream.write_all(b"later").await.unwrap();
    let echoed = read_exactly(&mut stream, Vec::new(), 5).await;
    assert_eq!(echoed, b"later");
    assert!(
        server.closed.try_recv().is_err(),
        "not closed while the echo runs"
    );

    // The client closes: the echo ends, the detached I/O is dropped, on_close runs once.
    stream.shutdown().await.unwrap();
    expect_eof(&mut stream).await;
    let (id, count) = tokio::time::timeout(LIMIT, server.closed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id, count), (client.id().get(), 1));
    assert!(client.is_closed());
    assert_eq!(
        (client.pending_requests(), client.pending_responses()),
        (0, 0)
    );
}

#[tokio::test]
async fn exported_state_is_visible_from_outside_and_dropping_the_io_closes() {
    let mut server = serve(Mode::Hand).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(UPGRADE).await.unwrap();
    assert!(read_101(&mut stream).await.is_empty());
    let client = server.clients.recv().await.unwrap();
    let mut conn = tokio::time::timeout(LIMIT, server.detached.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(conn.client().id(), client.id());
    assert!(client.is_exported());
    assert!(!client.is_closed());

    conn.write_all(b"from the server").await.unwrap();
    let got = read_exactly(&mut stream, Vec::new(), 15).await;
    assert_eq!(got, b"from the server");

    // The server side drops the detached I/O: the peer sees EOF, on_close runs once.
    drop(conn);
    expect_eof(&mut stream).await;
    let (id, count) = tokio::time::timeout(LIMIT, server.closed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id, count), (client.id().get(), 1));
    assert_eq!(client.status(), Status::CLOSED_RDWR);
}

#[tokio::test]
async fn close_on_an_exported_client_ends_the_socket_while_nobody_reads_it() {
    let mut server = serve(Mode::Hand).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(UPGRADE).await.unwrap();
    read_101(&mut stream).await;
    let client = server.clients.recv().await.unwrap();
    // The test holds the detached I/O and never reads it.
    let mut conn = tokio::time::timeout(LIMIT, server.detached.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    client.close();
    // The peer sees the connection end at once, though the I/O is still held.
    expect_eof(&mut stream).await;
    // Reads and writes on the detached I/O fail cleanly.
    assert!(conn.write_all(b"too late").await.is_err());
    let mut buf = [0u8; 8];
    assert!(conn.read(&mut buf).await.is_err());
    // The socket is still open (held here): the client is not closed for good yet.
    assert!(
        server.closed.try_recv().is_err(),
        "on_close waits for the socket"
    );
    drop(conn);
    assert_eq!(
        tokio::time::timeout(LIMIT, server.closed.recv())
            .await
            .unwrap()
            .unwrap()
            .1,
        1
    );
    client.close();
    assert!(server.closed.try_recv().is_err(), "on_close ran once only");
}

#[tokio::test]
async fn close_wakes_a_task_blocked_reading_the_detached_io() {
    let mut server = serve(Mode::Hand).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(UPGRADE).await.unwrap();
    read_101(&mut stream).await;
    let client = server.clients.recv().await.unwrap();
    let mut conn = tokio::time::timeout(LIMIT, server.detached.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        conn.read(&mut buf).await
    });
    tokio::task::yield_now().await;
    client.close();
    let read = tokio::time::timeout(LIMIT, reader).await.unwrap().unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    expect_eof(&mut stream).await;
}

#[tokio::test]
async fn the_stream_can_be_taken_out() {
    let mut server = serve(Mode::Hand).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut first = UPGRADE.to_vec();
    first.extend_from_slice(b"pre");
    stream.write_all(&first).await.unwrap();
    read_101(&mut stream).await;
    let conn = tokio::time::timeout(LIMIT, server.detached.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let conn = conn
        .into_parts::<tokio::net::UnixStream>()
        .expect_err("not a unix stream");
    let parts = conn.into_parts::<TcpStream>().expect("a TCP stream");
    assert_eq!(
        parts.io.get_ref().peer_addr().unwrap(),
        stream.local_addr().unwrap()
    );
    // Bytes the server had read past the head are handed over too, in the buffer or the io.
    let mut got = parts.read_buf.to_vec();
    let mut io = parts.io;
    while got.len() < 3 {
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(LIMIT, io.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"pre");
}

#[tokio::test]
async fn http2_cannot_detach() {
    let mut server = serve(Mode::Hand).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::get("http://x/upgrade")
        .body(Empty::<Bytes>::new())
        .unwrap();
    // Whatever the stream gets, the detach attempt fails at once with a clear error.
    let response = tokio::time::timeout(LIMIT, sender.send_request(request))
        .await
        .unwrap();
    let result = tokio::time::timeout(LIMIT, server.detached.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(DetachError::Http2)), "{result:?}");
    let client = server.clients.recv().await.unwrap();
    assert!(
        !client.is_exported(),
        "an HTTP/2 connection is never exported"
    );
    if let Ok(response) = response {
        assert_ne!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let _ = response.into_body().collect().await;
    }
}

#[tokio::test]
async fn websocket_example_echoes_over_a_detached_connection() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let example = Example::start("websocket", &["127.0.0.1:0"]).await;
    let url = example
        .first_line
        .trim_start_matches("listening on ")
        .to_owned();
    let (mut ws, response) = tokio::time::timeout(LIMIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.unwrap();
    let hello = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        hello.to_text().unwrap().ends_with("exported=true"),
        "{hello:?}"
    );
    let echo = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let echo = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.unwrap();
    // The server prints when the client closes: on_close ran after the WebSocket ended.
    let line = tokio::time::timeout(LIMIT, example.next_line())
        .await
        .unwrap();
    assert!(line.ends_with(" closed"), "{line}");
}
