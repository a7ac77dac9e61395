//! `on_close`, `close()`, `shutdown()` and `status()`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use hyper_remote_client::{ClientInfo, CloseReason, Options, RequestBody, Status};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};

/// Counts `on_close` runs and signals each one.
struct CloseCounter {
    count: Arc<AtomicUsize>,
    rx: mpsc::UnboundedReceiver<bool>,
}

impl CloseCounter {
    fn register(client: &ClientInfo) -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let c = count.clone();
        client.on_close(move |client| {
            c.fetch_add(1, Ordering::SeqCst);
            // What the callback sees: the connection is closed.
            let _ = tx.send(client.is_closed());
        });
        CloseCounter { count, rx }
    }

    async fn wait(&mut self) {
        let saw_closed = within("on_close", self.rx.recv())
            .await
            .expect("callback dropped unrun");
        assert!(saw_closed, "on_close callback runs with the client closed");
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// `/close`: the handler closes its own connection. `/block`: reports entry and waits on
/// `gate`. Anything else: 200 "ok".
async fn server(options: Options) -> (Harness, mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let h = serve(
        options,
        tower::service_fn(move |req: Request<RequestBody>| {
            let (entered_tx, g) = (entered_tx.clone(), g.clone());
            async move {
                let client = req.extensions().get::<ClientInfo>().unwrap().clone();
                match req.uri().path() {
                    "/close" => {
                        client.close();
                        assert!(client.is_closed());
                        HandlerResult::Ok(ok("never sent"))
                    }
                    "/block" => {
                        entered_tx.send(()).unwrap();
                        g.acquire().await.unwrap().forget();
                        HandlerResult::Ok(ok("released"))
                    }
                    _ => HandlerResult::Ok(ok("ok")),
                }
            }
        }),
    )
    .await;
    (h, entered, gate)
}

#[tokio::test]
async fn on_close_runs_once_when_the_peer_closes() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let mut c = h1_client(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    let resp = within("GET", c.sender.send_request(h1_req("GET", "/", "")))
        .await
        .unwrap();
    assert_eq!(body_of(resp).await, "ok");
    assert_eq!(counter.count(), 0, "open connection: no callback yet");
    assert!(!client.is_closed());
    drop(c);
    counter.wait().await;
    assert_eq!(client.status(), Status::CLOSED_RDWR);
    assert!(matches!(
        h.reason_of(client.id().get()).await,
        CloseReason::Finished
    ));
    client.close();
    client.close();
    assert_eq!(counter.count(), 1, "exactly once");
}

#[tokio::test]
async fn on_close_registered_after_close_runs_immediately() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let _stream = connect(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    client.close();
    // The callbacks run once the serving task has dropped the socket.
    counter.wait().await;
    assert_eq!(counter.count(), 1);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    client.on_close(move |c| {
        assert!(c.is_closed());
        r.store(true, Ordering::SeqCst);
    });
    assert!(ran.load(Ordering::SeqCst), "ran before on_close returned");
    client.close();
    assert_eq!(counter.count(), 1, "second close() fires nothing");
}

#[tokio::test]
async fn many_callbacks_each_run_once() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let stream = connect(h.addr).await;
    let client = h.next_client().await;
    let count = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let c = count.clone();
        client.on_close(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        });
    }
    let closed = closed_signal(&client);
    drop(stream);
    wait_closed("peer closed", closed).await;
    assert_eq!(count.load(Ordering::SeqCst), 10);
    client.close();
    assert_eq!(count.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn close_inside_handler_ends_the_connection_without_a_response() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    let start = Instant::now();
    stream
        .write_all(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_eof(&mut stream).await.expect("EOF, not a reset");
    assert!(
        reply.is_empty(),
        "no response bytes, got {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "closed quickly: {:?}",
        start.elapsed()
    );
    counter.wait().await;
    assert_eq!(counter.count(), 1);
    assert_eq!(client.status(), Status::CLOSED_RDWR);
    // (The CloseReason is checked in `close_inside_handler_is_reported_as_closed`.)
    let _ = h.reason_of(client.id().get()).await;
    assert_eq!(counter.count(), 1);
}

/// `RemoteClient::start` must return `CloseReason::Closed` when `close()` was called; repeated
/// because the wrong answer depends on how the poll that runs the handler goes on.
#[tokio::test]
async fn close_inside_handler_is_reported_as_closed() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    for _ in 0..20 {
        let mut stream = connect(h.addr).await;
        let client = h.next_client().await;
        stream
            .write_all(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_eof(&mut stream).await.expect("EOF").is_empty());
        let reason = h.reason_of(client.id().get()).await;
        assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    }
}

#[tokio::test]
async fn close_inside_handler_h2() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let mut c = h2_client(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    let result = within(
        "h2 /close",
        c.sender.send_request(h2_req(h.addr, "GET", "/close", "")),
    )
    .await;
    assert!(result.is_err(), "no response: {result:?}");
    counter.wait().await;
    let conn = within("client connection ends", &mut c.conn).await.unwrap();
    let _ = conn;
    let reason = h.reason_of(client.id().get()).await;
    assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    assert_eq!(counter.count(), 1);
}

#[tokio::test]
async fn close_from_outside_on_an_idle_keep_alive_connection() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 200);
    assert_eq!(counter.count(), 0);
    client.close();
    let rest = read_to_eof(&mut stream).await.expect("EOF");
    assert!(rest.is_empty());
    let reason = h.reason_of(client.id().get()).await;
    assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    counter.wait().await;
    client.close();
    assert_eq!(counter.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_from_another_task_while_the_handler_is_mid_response() {
    let (mut h, mut entered, _gate) = server(Options::default()).await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    stream
        .write_all(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    within("handler entered", entered.recv()).await.unwrap();
    assert_eq!(client.pending_responses(), 1);
    let c = client.clone();
    within("close task", tokio::spawn(async move { c.close() }))
        .await
        .unwrap();
    let reply = read_to_eof(&mut stream).await.expect("EOF");
    assert!(
        reply.is_empty(),
        "no response: {:?}",
        String::from_utf8_lossy(&reply)
    );
    counter.wait().await;
    // (The CloseReason races with the connection's own poll; see
    // `close_from_another_thread_mid_response_is_reported_as_closed`.)
    let _ = h.reason_of(client.id().get()).await;
    // The handler was dropped with the connection: nothing pending.
    assert_eq!(
        (client.pending_requests(), client.pending_responses()),
        (0, 0)
    );
    assert_eq!(counter.count(), 1);
}

/// Same as above, repeated, checking the `CloseReason`: a race, so this fails only sometimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_from_another_thread_mid_response_is_reported_as_closed() {
    let (mut h, mut entered, _gate) = server(Options::default()).await;
    for _ in 0..100 {
        let mut stream = connect(h.addr).await;
        let client = h.next_client().await;
        stream
            .write_all(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        within("handler entered", entered.recv()).await.unwrap();
        let c = client.clone();
        within("close task", tokio::spawn(async move { c.close() }))
            .await
            .unwrap();
        assert!(read_to_eof(&mut stream).await.expect("EOF").is_empty());
        let reason = h.reason_of(client.id().get()).await;
        assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_from_another_task_while_an_h2_handler_is_mid_response() {
    let (mut h, mut entered, _gate) = server(Options::default()).await;
    let mut c = h2_client(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    let req = c.sender.send_request(h2_req(h.addr, "GET", "/block", ""));
    let pending = tokio::spawn(req);
    within("handler entered", entered.recv()).await.unwrap();
    assert_eq!(client.pending_responses(), 1);
    client.close();
    let result = within("h2 request", pending).await.unwrap();
    assert!(result.is_err(), "no response: {result:?}");
    counter.wait().await;
    let reason = h.reason_of(client.id().get()).await;
    assert!(matches!(reason, CloseReason::Closed), "{reason:?}");
    // The stream's handler runs in its own task; it is cancelled with the connection.
    eventually("h2 handler dropped after close", || {
        client.pending_responses() == 0
    })
    .await;
    assert_eq!(counter.count(), 1);
}

#[tokio::test]
async fn peer_half_close_sets_closed_rd() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    let closed = closed_signal(&client);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    assert_eq!(client.status(), Status::OPEN);
    stream.shutdown().await.unwrap(); // our write side: the server reads EOF
    eventually("CLOSED_RD after the peer's EOF", || {
        client.status().contains(Status::CLOSED_RD)
    })
    .await;
    wait_closed("connection ends after EOF", closed).await;
    assert_eq!(client.status(), Status::CLOSED_RDWR);
    assert!(client.is_closed());
    // The server closed its side too.
    assert!(read_to_eof(&mut stream).await.expect("EOF").is_empty());
}

#[tokio::test]
async fn status_after_close_is_closed_rdwr() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let _stream = connect(h.addr).await;
    let client = h.next_client().await;
    assert_eq!(client.status(), Status::OPEN);
    assert!(!client.is_closed());
    client.close();
    assert_eq!(client.status(), Status::CLOSED_RDWR);
    assert!(client.is_closed());
}

#[tokio::test]
async fn shutdown_finishes_the_response_in_flight_then_closes() {
    let (mut h, mut entered, gate) = server(Options::default()).await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    stream
        .write_all(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    within("handler entered", entered.recv()).await.unwrap();
    client.shutdown();
    assert_eq!(
        counter.count(),
        0,
        "graceful: still open while the handler runs"
    );
    gate.add_permits(1);
    let reply = read_to_eof(&mut stream)
        .await
        .expect("EOF after the response");
    let (resp, _) = parse_response(&reply).expect("the response in flight is delivered");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"released");
    counter.wait().await;
    assert!(matches!(
        h.reason_of(client.id().get()).await,
        CloseReason::Shutdown
    ));
    assert_eq!(counter.count(), 1);
}

#[tokio::test]
async fn shutdown_of_an_idle_connection_closes_it() {
    let (mut h, _entered, _gate) = server(Options::default()).await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    let mut counter = CloseCounter::register(&client);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    client.shutdown();
    assert!(read_to_eof(&mut stream).await.expect("EOF").is_empty());
    counter.wait().await;
    let reason = h.reason_of(client.id().get()).await;
    assert!(matches!(reason, CloseReason::Shutdown), "{reason:?}");
}

#[test]
fn a_panicking_on_close_callback_does_not_stop_the_others() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let client = hyper_remote_client::ClientInfo::builder(
        "127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap(),
        "127.0.0.1:2".parse::<std::net::SocketAddr>().unwrap(),
    )
    .build();
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..3 {
        let ran = ran.clone();
        client.on_close(move |_| {
            if i == 1 {
                panic!("a callback that panics");
            }
            ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    client.close(); // does not unwind into the caller
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert!(client.is_closed());
}
