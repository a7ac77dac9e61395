//! `Socketed`: a stream type of another crate (here tokio's `BufStream` over TCP) served by
//! `RemoteClient` with the function that finds its socket, so that `close()` on a detached
//! connection still shuts the socket down while user code holds the stream unread.
#![cfg(unix)]

use std::convert::Infallible;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_remote_client::{
    detach, driver::DefaultHttpDriverFactory, ClientInfo, Detached, Options, RemoteClient,
    RequestBody, Socketed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn close_shuts_down_the_socket_of_a_foreign_stream_after_detach() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (clients_tx, mut clients) = mpsc::unbounded_channel::<ClientInfo>();
    let (detached_tx, mut detached) = mpsc::unbounded_channel::<Detached>();
    tokio::spawn(async move {
        let options = Arc::new(Options::default());
        let drivers = DefaultHttpDriverFactory::new(&options);
        let (stream, _) = listener.accept().await.expect("accept");
        let client = ClientInfo::builder_for_tcp(&stream)
            .expect("addresses")
            .options(options)
            .build();
        // Not a type the crate knows: `Socketed` says where its socket is.
        let stream = Socketed::new(BufStream::new(stream), |s| Some(s.get_ref().as_fd()));
        let client = RemoteClient::new(stream, client);
        let _ = clients_tx.send(client.client().clone());
        let service = tower::service_fn(move |mut req: Request<RequestBody>| {
            let detached_tx = detached_tx.clone();
            async move {
                let on_detach = detach(&mut req);
                tokio::spawn(async move {
                    if let Ok(conn) = on_detach.await {
                        let _ = detached_tx.send(conn);
                    }
                });
                let mut response = Response::new(Empty::<Bytes>::new());
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                response
                    .headers_mut()
                    .insert("connection", "upgrade".parse().expect("header"));
                response
                    .headers_mut()
                    .insert("upgrade", "echo".parse().expect("header"));
                Ok::<_, Infallible>(response)
            }
        });
        client.start(&drivers, service).await;
    });

    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .expect("request");
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("the 101 in time")
            .expect("read");
        assert!(n > 0, "EOF before the 101");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let client = clients.recv().await.expect("the client");
    // The test holds the detached stream and never reads it.
    let _conn = tokio::time::timeout(LIMIT, detached.recv())
        .await
        .expect("detached in time")
        .expect("detached");
    assert!(client.is_exported());
    client.close();
    // The peer sees the end at once: the socket `Socketed` found was shut down.
    let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
        .await
        .expect("EOF in time, while the detached stream is held")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF after close()");
}
