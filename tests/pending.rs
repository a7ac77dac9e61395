//! `pending_requests()`, `pending_responses()` and `is_waiting_on_response()`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_remote_client::{ClientInfo, CloseReason, Options, RequestBody, Status};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};

fn counts(c: &ClientInfo) -> (usize, usize, bool) {
    (
        c.pending_requests(),
        c.pending_responses(),
        c.is_waiting_on_response(),
    )
}

/// Events a slow-reading handler reports.
#[derive(Debug, PartialEq)]
enum Ev {
    Entered,
    Frame(usize),
    BodyEnd,
    BodyError,
}

/// `/slow`: reports entry, waits for `read_gate`, reads the body frame by frame (reporting
/// each), then waits for `respond_gate`. `/check`: answers the counts it sees at once.
async fn slow_reader() -> (
    Harness,
    mpsc::UnboundedReceiver<Ev>,
    Arc<Semaphore>,
    Arc<Semaphore>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let read_gate = Arc::new(Semaphore::new(0));
    let respond_gate = Arc::new(Semaphore::new(0));
    let (rg, sg) = (read_gate.clone(), respond_gate.clone());
    let h = serve(
        Options::default(),
        tower::service_fn(move |req: Request<RequestBody>| {
            let (tx, rg, sg) = (tx.clone(), rg.clone(), sg.clone());
            async move {
                let client = req.extensions().get::<ClientInfo>().unwrap().clone();
                if req.uri().path() == "/check" {
                    let (a, b, w) = counts(&client);
                    return HandlerResult::Ok(ok(format!("{a} {b} {w}")));
                }
                tx.send(Ev::Entered).unwrap();
                rg.acquire().await.unwrap().forget();
                let mut body = req.into_body();
                loop {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            let n = frame.data_ref().map_or(0, |d| d.len());
                            tx.send(Ev::Frame(n)).unwrap();
                        }
                        Some(Err(_)) => {
                            let _ = tx.send(Ev::BodyError);
                            break;
                        }
                        None => {
                            tx.send(Ev::BodyEnd).unwrap();
                            break;
                        }
                    }
                }
                sg.acquire().await.unwrap().forget();
                HandlerResult::Ok(ok("done"))
            }
        }),
    )
    .await;
    (h, rx, read_gate, respond_gate)
}

async fn next_ev(rx: &mut mpsc::UnboundedReceiver<Ev>) -> Ev {
    within("handler event", rx.recv())
        .await
        .expect("handler gone")
}

#[tokio::test]
async fn slow_request_body_then_slow_response() {
    let (mut h, mut ev, read_gate, respond_gate) = slow_reader().await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    stream
        .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    assert_eq!(next_ev(&mut ev).await, Ev::Entered);
    // The handler runs, the body is not complete: one request and one response pending.
    assert_eq!(counts(&client), (1, 1, false));
    read_gate.add_permits(1);
    assert_eq!(next_ev(&mut ev).await, Ev::Frame(5));
    assert_eq!(counts(&client), (1, 1, false), "half the body read");

    stream.write_all(b"56789").await.unwrap();
    assert_eq!(next_ev(&mut ev).await, Ev::Frame(5));
    assert_eq!(next_ev(&mut ev).await, Ev::BodyEnd);
    // Body read, handler still working on the response.
    assert_eq!(counts(&client), (0, 1, true));

    respond_gate.add_permits(1);
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"done");
    eventually("both counts 0 after the response", || {
        counts(&client) == (0, 0, false)
    })
    .await;
    // And the next request on this keep-alive connection sees only itself.
    stream
        .write_all(b"GET /check HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(String::from_utf8(resp.body).unwrap(), "0 1 true");
    eventually("both counts 0 at the end", || {
        counts(&client) == (0, 0, false)
    })
    .await;
}

#[tokio::test]
async fn request_without_body_is_not_pending() {
    let (mut h, _ev, _r, _s) = slow_reader().await;
    let mut c = h1_client(h.addr).await;
    let _client = h.next_client().await;
    let resp = within("GET", c.sender.send_request(h1_req("GET", "/check", "")))
        .await
        .unwrap();
    assert_eq!(body_of(resp).await, "0 1 true");
    // Content-Length: 0 is no body either.
    let resp = within("POST", c.sender.send_request(h1_req("POST", "/check", "")))
        .await
        .unwrap();
    assert_eq!(body_of(resp).await, "0 1 true");
    // Over h2c, headers with END_STREAM.
    let mut c2 = h2_client(h.addr).await;
    let resp = within(
        "GET h2",
        c2.sender.send_request(h2_req(h.addr, "GET", "/check", "")),
    )
    .await
    .unwrap();
    assert_eq!(body_of(resp).await, "0 1 true");
}

#[tokio::test]
async fn unread_request_body_is_pending_until_dropped() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut h = serve(
        Options::default(),
        tower::service_fn(move |req: Request<RequestBody>| {
            let tx = tx.clone();
            async move {
                let client = req.extensions().get::<ClientInfo>().unwrap().clone();
                let before = counts(&client);
                drop(req);
                let after = counts(&client);
                tx.send((before, after)).unwrap();
                HandlerResult::Ok(ok("x"))
            }
        }),
    )
    .await;
    let mut c = h1_client(h.addr).await;
    let _ = h.next_client().await;
    let resp = within(
        "POST",
        c.sender.send_request(h1_req("POST", "/", "some body")),
    )
    .await
    .unwrap();
    body_of(resp).await;
    let (before, after) = within("report", rx.recv()).await.unwrap();
    assert_eq!(before, (1, 1, false));
    assert_eq!(
        after,
        (0, 1, true),
        "dropping the body ends the pending request"
    );
}

/// A server whose handler answers with a body fed by the test (the sender is handed over).
async fn streaming_server() -> (
    Harness,
    mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>,
) {
    let (senders_tx, senders_rx) = mpsc::unbounded_channel();
    let h = serve(
        Options::default(),
        tower::service_fn(move |_req: Request<RequestBody>| {
            let senders_tx = senders_tx.clone();
            async move {
                let (tx, body) = ChannelBody::new();
                senders_tx.send(tx).unwrap();
                Ok::<_, std::convert::Infallible>(Response::new(body))
            }
        }),
    )
    .await;
    (h, senders_rx)
}

/// The next non-empty data frame (h2 may end a stream with an empty DATA frame).
async fn next_frame(body: &mut hyper::body::Incoming) -> Option<Bytes> {
    for _ in 0..100 {
        match within("response frame", body.frame()).await {
            None => return None,
            Some(frame) => {
                let data = frame.expect("frame").into_data().expect("data frame");
                if !data.is_empty() {
                    return Some(data);
                }
            }
        }
    }
    panic!("too many empty frames");
}

#[tokio::test]
async fn streaming_response_is_pending_until_its_last_frame_http1() {
    let (mut h, mut senders) = streaming_server().await;
    let mut c = h1_client(h.addr).await;
    let client = h.next_client().await;
    let resp = within(
        "response head",
        c.sender.send_request(h1_req("GET", "/", "")),
    )
    .await
    .unwrap();
    let tx = within("body sender", senders.recv()).await.unwrap();
    let mut body = resp.into_body();
    assert_eq!(counts(&client), (0, 1, true));
    for chunk in ["a", "bb", "ccc"] {
        tx.send(Bytes::from(chunk)).unwrap();
        assert_eq!(next_frame(&mut body).await.unwrap(), chunk);
        assert_eq!(counts(&client), (0, 1, true), "still streaming");
    }
    drop(tx);
    assert_eq!(next_frame(&mut body).await, None);
    // The body ended (and the pending response with it) before the last chunk was written.
    assert_eq!(counts(&client), (0, 0, false));
}

#[tokio::test]
async fn streaming_response_is_pending_until_its_last_frame_h2() {
    let (mut h, mut senders) = streaming_server().await;
    let mut c = h2_client(h.addr).await;
    let client = h.next_client().await;
    let resp = within(
        "response head",
        c.sender.send_request(h2_req(h.addr, "GET", "/", "")),
    )
    .await
    .unwrap();
    let tx = within("body sender", senders.recv()).await.unwrap();
    let mut body = resp.into_body();
    assert_eq!(counts(&client), (0, 1, true));
    for chunk in ["a", "bb", "ccc"] {
        tx.send(Bytes::from(chunk)).unwrap();
        assert_eq!(next_frame(&mut body).await.unwrap(), chunk);
        assert_eq!(counts(&client), (0, 1, true), "still streaming");
    }
    drop(tx);
    assert_eq!(next_frame(&mut body).await, None);
    assert_eq!(counts(&client), (0, 0, false));
}

#[tokio::test]
async fn disconnect_mid_request_body_clears_counts() {
    let (mut h, mut ev, read_gate, respond_gate) = slow_reader().await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    let closed = closed_signal(&client);
    stream
        .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    assert_eq!(next_ev(&mut ev).await, Ev::Entered);
    read_gate.add_permits(1);
    assert_eq!(next_ev(&mut ev).await, Ev::Frame(5));
    assert_eq!(counts(&client), (1, 1, false));
    drop(stream);
    // The handler's body read fails; the failed body is no longer a pending request, and the
    // handler is still producing its response on a connection whose read side is closed.
    assert_eq!(next_ev(&mut ev).await, Ev::BodyError);
    assert_eq!(counts(&client), (0, 1, true));
    assert!(
        client.status().contains(Status::CLOSED_RD),
        "status {:?}",
        client.status()
    );
    respond_gate.add_permits(1);
    wait_closed("on_close after the peer went away", closed).await;
    assert_eq!(
        counts(&client),
        (0, 0, false),
        "nothing pending on a closed connection"
    );
    assert!(client.is_closed());
    let reason = h.reason_of(client.id().get()).await;
    assert!(
        matches!(reason, CloseReason::Error(_) | CloseReason::Finished),
        "unexpected reason {reason:?}"
    );
}

#[tokio::test]
async fn disconnect_mid_streaming_response_clears_counts_http1() {
    let (mut h, mut senders) = streaming_server().await;
    let mut stream = connect(h.addr).await;
    let client = h.next_client().await;
    let closed = closed_signal(&client);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let tx = within("body sender", senders.recv()).await.unwrap();
    tx.send(Bytes::from_static(b"first")).unwrap();
    // Read the head and the first chunk.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..100 {
        if got.windows(5).any(|w| w == b"first") {
            break;
        }
        let n = within("read", tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
            .await
            .unwrap();
        assert!(n > 0, "EOF before the first chunk");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.windows(5).any(|w| w == b"first"));
    assert_eq!(counts(&client), (0, 1, true));
    drop(stream);
    // An EOF alone may be a half-close (the peer still reads): the connection ends at the
    // next write, which the vanished peer refuses.
    let mut closed = closed;
    let mut gone = false;
    for _ in 0..100 {
        tokio::select! {
            _ = &mut closed => { gone = true; break }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                let _ = tx.send(Bytes::from_static(b"more"));
            }
        }
    }
    assert!(gone, "on_close after the peer went away mid-response");
    assert_eq!(counts(&client), (0, 0, false));
    assert!(client.is_closed());
    drop(tx);
}

#[tokio::test]
async fn disconnect_mid_streaming_response_clears_counts_h2() {
    let (mut h, mut senders) = streaming_server().await;
    let mut c = h2_client(h.addr).await;
    let client = h.next_client().await;
    let closed = closed_signal(&client);
    let resp = within(
        "response head",
        c.sender.send_request(h2_req(h.addr, "GET", "/", "")),
    )
    .await
    .unwrap();
    let tx = within("body sender", senders.recv()).await.unwrap();
    let mut body = resp.into_body();
    tx.send(Bytes::from_static(b"first")).unwrap();
    assert_eq!(next_frame(&mut body).await.unwrap(), "first");
    assert_eq!(counts(&client), (0, 1, true));
    // Drop the whole client connection: the socket closes.
    c.conn.abort();
    drop(body);
    drop(c);
    wait_closed("on_close after the h2 peer went away", closed).await;
    assert!(client.is_closed());
    assert_eq!(
        counts(&client),
        (0, 0, false),
        "nothing pending once on_close has run"
    );
    drop(tx);
}
