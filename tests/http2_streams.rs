//! HTTP/2 streams and the tasks they run on (`Options::http2_inline_streams`): a stream whose
//! response is ready at once is answered on its connection's task; one that has to wait gets a
//! task of its own and does not hold the connection's other streams; a panic in a handler ends
//! its stream alone, a panic in a connection's poll that connection alone; with the option off
//! every stream is a task.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use hyper_remote_client::{
    driver::DefaultHttpDriverFactory, BorrowedSocket, ClientInfo, Options, RemoteClient,
    RequestBody, StreamSocket,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

mod common;
use common::*;

/// `/id`: the id of the task the handler runs on. `/wait`: waits until `/release` is called,
/// then answers its task's id. `/panic`: panics in the handler's first poll. `/count`: the
/// connection's pending responses (this one included) and requests. `/big`: 256 KiB.
fn service(
    release: Arc<Notify>,
) -> impl hyper_remote_client::layer::Handler<http_body_util::Full<bytes::Bytes>> {
    tower::service_fn(move |req: Request<RequestBody>| {
        let release = release.clone();
        async move {
            let task = || format!("{:?}", tokio::task::try_id());
            let body = match req.uri().path() {
                "/wait" => {
                    release.notified().await;
                    task()
                }
                "/release" => {
                    release.notify_one();
                    "released".to_owned()
                }
                "/panic" => panic!("the handler panics (expected by this test)"),
                "/big" => "x".repeat(BIG),
                "/count" => {
                    let client = req.extensions().get::<ClientInfo>().unwrap();
                    format!(
                        "{}/{}",
                        client.pending_responses(),
                        client.pending_requests()
                    )
                }
                _ => task(),
            };
            Ok::<_, Infallible>(ok(body))
        }
    })
}

const BIG: usize = 256 * 1024;

async fn get(client: &mut H2Client, addr: std::net::SocketAddr, path: &str) -> String {
    let response = within(
        path,
        client.sender.send_request(h2_req(addr, "GET", path, "")),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(response.status(), 200, "{path}");
    String::from_utf8(body_of(response).await.to_vec()).unwrap()
}

/// The task that served `SAME` of the `/id` requests sent one after another on `client` (at
/// most `TRIES`): the connection's task. Inline first polls are bounded in wall time (50 µs;
/// after three batches in a row over it, a connection spawns its next 64): on a loaded machine
/// or in a debug build some first polls run over and go on in a task of their own. Yet every
/// batch polled inline polls at least its first stream there, so at least 3 of every 67
/// requests are answered on the connection's task whatever the load; with every stream
/// spawned, no task serves two.
async fn connection_task(client: &mut H2Client, addr: std::net::SocketAddr) -> Option<String> {
    const SAME: usize = 6;
    const TRIES: usize = 256;
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for _ in 0..TRIES {
        let id = get(client, addr, "/id").await;
        assert!(id.starts_with("Some("), "{id}");
        let count = counts.entry(id.clone()).or_default();
        *count += 1;
        if *count == SAME {
            return Some(id);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ready_at_once_is_answered_on_its_connections_task() {
    let harness = serve(Options::default(), service(Arc::default())).await;
    let addr = harness.addr;
    let mut one = h2_client(addr).await;
    let mut other = h2_client(addr).await;

    let first = connection_task(&mut one, addr)
        .await
        .expect("same connection, same task");
    let other = connection_task(&mut other, addr)
        .await
        .expect("same connection, same task");
    assert_ne!(other, first, "another connection, another task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_inline_streams_off_every_stream_is_a_task_of_its_own() {
    let options = Options::default().with_http2_inline_streams(false);
    let harness = serve(options, service(Arc::default())).await;
    let addr = harness.addr;
    let mut client = h2_client(addr).await;

    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let id = get(&mut client, addr, "/id").await;
        assert!(seen.insert(id.clone()), "task {id} served two streams");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_stream_gets_a_task_and_does_not_hold_the_others() {
    let harness = serve(Options::default(), service(Arc::default())).await;
    let addr = harness.addr;
    let mut client = h2_client(addr).await;
    let task = connection_task(&mut client, addr)
        .await
        .expect("the connection's task");

    // `/wait` answers only once `/release`, a later stream of the same connection, has run.
    let waiting = client.sender.send_request(h2_req(addr, "GET", "/wait", ""));
    let waiting = tokio::spawn(waiting);
    // The connection goes on serving meanwhile.
    assert!(get(&mut client, addr, "/id").await.starts_with("Some("));
    assert_eq!(get(&mut client, addr, "/release").await, "released");

    let response = within("the waiting stream", waiting)
        .await
        .unwrap()
        .expect("the waiting stream is answered");
    let waited_on = String::from_utf8(body_of(response).await.to_vec()).unwrap();
    assert!(waited_on.starts_with("Some("), "{waited_on}");
    assert_ne!(waited_on, task, "it went on in a task of its own");
    assert_eq!(get(&mut client, addr, "/count").await, "1/0");
}

#[tokio::test]
async fn a_panic_in_a_handler_ends_its_stream_alone() {
    let harness = serve(Options::default(), service(Arc::default())).await;
    let addr = harness.addr;
    let mut client = h2_client(addr).await;

    for method in ["GET", "POST", "GET"] {
        // The POST's body is counted as pending until the panic drops it.
        let failed = within(
            "the panicking stream",
            client
                .sender
                .send_request(h2_req(addr, method, "/panic", "a body")),
        )
        .await;
        assert!(failed.is_err(), "the stream is reset: {failed:?}");
        // The connection, its other streams and its counters go on.
        assert_eq!(get(&mut client, addr, "/count").await, "1/0");
    }
    assert!(!client.conn.is_finished(), "the connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_larger_than_the_window_is_sent_whole() {
    let harness = serve(Options::default(), service(Arc::default())).await;
    let addr = harness.addr;
    // A 16 KiB stream window: the handler is ready at once, its body waits for the window.
    let stream = connect(addr).await;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .adaptive_window(false)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let response = within("/big", sender.send_request(h2_req(addr, "GET", "/big", "")))
            .await
            .expect("/big");
        assert_eq!(body_of(response).await.len(), BIG);
    }
}

/// A connection's stream that panics on its first read once armed (one-shot).
struct PanicsOnRead {
    inner: TcpStream,
    armed: Arc<AtomicBool>,
}

impl AsyncRead for PanicsOnRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("the connection's I/O panics (expected by this test)");
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PanicsOnRead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl StreamSocket for PanicsOnRead {
    fn socket(&self) -> Option<BorrowedSocket<'_>> {
        self.inner.socket()
    }
}

// current_thread: every connection runs on the test's thread, so one connection's panic in
// the middle of its poll would leave that thread's state to the next one.
#[tokio::test]
async fn a_panic_in_a_connections_poll_ends_that_connection_alone() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let drivers = Arc::new(DefaultHttpDriverFactory::new(&Options::default()));
    let accept_armed = armed.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let info = ClientInfo::builder_for_tcp(&stream).unwrap().build();
            let stream = PanicsOnRead {
                inner: stream,
                armed: accept_armed.clone(),
            };
            let client = RemoteClient::new(stream, info);
            let drivers = drivers.clone();
            tokio::spawn(async move {
                client.start(&*drivers, service(Arc::default())).await;
            });
        }
    });

    let mut first = h2_client(addr).await;
    get(&mut first, addr, "/id").await;
    armed.store(true, Ordering::SeqCst);
    let failed = within(
        "a request on the connection whose poll panics",
        first.sender.send_request(h2_req(addr, "GET", "/id", "")),
    )
    .await;
    assert!(failed.is_err(), "its connection ended: {failed:?}");
    assert!(!armed.load(Ordering::SeqCst), "the panic happened");

    // Other connections on the same thread are served as before, their streams inline.
    for _ in 0..2 {
        let mut other = h2_client(addr).await;
        connection_task(&mut other, addr)
            .await
            .expect("the connection's task");
        assert_eq!(get(&mut other, addr, "/count").await, "1/0");
    }
}

#[tokio::test]
async fn a_service_whose_clone_panics_fails_that_request_alone() {
    #[derive(Default)]
    struct Flaky {
        clones: Arc<AtomicUsize>,
    }
    impl Clone for Flaky {
        fn clone(&self) -> Self {
            // Every second clone panics.
            if self.clones.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
                panic!("the service's clone panics (expected by this test)");
            }
            Flaky {
                clones: self.clones.clone(),
            }
        }
    }
    impl tower::Service<Request<RequestBody>> for Flaky {
        type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<RequestBody>) -> Self::Future {
            std::future::ready(Ok(ok("ok")))
        }
    }

    let flaky = Flaky::default();
    let clones = flaky.clones.clone();
    let harness = serve(Options::default(), flaky).await;
    let addr = harness.addr;
    let mut client = h2_client(addr).await;
    let (mut answered, mut failed) = (0, 0);
    for _ in 0..6 {
        let before = clones.load(Ordering::SeqCst);
        let sent = client.sender.send_request(h2_req(addr, "GET", "/", ""));
        match within("a request", sent).await {
            Ok(response) => {
                assert_eq!(body_of(response).await, "ok");
                answered += 1;
            }
            Err(_) => failed += 1,
        }
        assert!(
            clones.load(Ordering::SeqCst) > before,
            "the service was cloned"
        );
    }
    assert!(
        answered >= 2 && failed >= 2,
        "{answered} answered, {failed} failed"
    );
    assert!(!client.conn.is_finished(), "the connection is still open");
}

/// Serves h2c prior-knowledge connections with hyper-util's `auto::Builder` and a
/// `StreamExecutor`, each connection wrapped in `InlineStreams` if `inline`; answers `/id` with
/// the id of the task the handler runs on.
async fn own_loop(inline: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(ok(format!("{:?}", tokio::task::try_id())))
                });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_remote_client::driver::StreamExecutor::default(),
                );
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let _ = if inline {
                    hyper_remote_client::driver::InlineStreams::new(conn).await
                } else {
                    conn.await
                };
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_streams_in_an_accept_loop_of_your_own() {
    let addr = own_loop(true).await;
    let mut client = h2_client(addr).await;
    connection_task(&mut client, addr)
        .await
        .expect("the connection's task");

    // Not wrapped: the same executor spawns every stream.
    let addr = own_loop(false).await;
    let mut client = h2_client(addr).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let id = get(&mut client, addr, "/id").await;
        assert!(seen.insert(id.clone()), "task {id} served two streams");
    }
}
