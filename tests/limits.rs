//! Options enforced on requests: header and body size limits, methods, `OPTIONS *`, HTTP/2
//! concurrent streams.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, LengthLimitError};
use hyper_remote_client::{Options, RequestBody};
use tokio::sync::{mpsc, Semaphore};

const DEFAULT_ALLOW: &str = "GET, POST, PUT, PATCH, HEAD, OPTIONS, DELETE";

/// What the handler saw when reading a body.
#[derive(Debug, PartialEq)]
enum Read {
    Ok(usize),
    LengthLimit,
    Other(String),
}

/// A server whose handler counts its calls, reads the whole body (413 on
/// `LengthLimitError`, reporting what it saw) and answers 200 with the body length.
async fn counting_server(
    options: Options,
) -> (Harness, Arc<AtomicUsize>, mpsc::UnboundedReceiver<Read>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let c = calls.clone();
    let h = serve(
        options,
        tower::service_fn(move |req: Request<RequestBody>| {
            let (c, tx) = (c.clone(), tx.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                match req.into_body().collect().await {
                    Ok(body) => {
                        let n = body.to_bytes().len();
                        tx.send(Read::Ok(n)).unwrap();
                        HandlerResult::Ok(ok(n.to_string()))
                    }
                    Err(error) if error.is::<LengthLimitError>() => {
                        tx.send(Read::LengthLimit).unwrap();
                        let mut resp = ok("too large");
                        *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                        HandlerResult::Ok(resp)
                    }
                    Err(error) => {
                        tx.send(Read::Other(error.to_string())).unwrap();
                        let mut resp = ok("bad");
                        *resp.status_mut() = StatusCode::BAD_REQUEST;
                        HandlerResult::Ok(resp)
                    }
                }
            }
        }),
    )
    .await;
    (h, calls, rx)
}

fn request_with_header(name: &str, value_len: usize) -> Vec<u8> {
    let mut req = format!("GET / HTTP/1.1\r\nHost: x\r\n{name}: ").into_bytes();
    req.extend(std::iter::repeat_n(b'a', value_len));
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    req
}

async fn raw_status(h: &Harness, request: &[u8]) -> RawResponse {
    let reply = raw_exchange(h.addr, request).await;
    parse_response(&reply)
        .unwrap_or_else(|| panic!("no response in {:?}", String::from_utf8_lossy(&reply)))
        .0
}

#[tokio::test]
async fn header_over_the_limit_is_431() {
    let (h, calls, _rx) = counting_server(Options::default()).await;
    let resp = raw_status(&h, &request_with_header("x-big", 40 * 1024)).await;
    assert_eq!(resp.status, 431);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Under the limit is fine.
    let resp = raw_status(&h, &request_with_header("x-big", 20 * 1024)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn custom_header_limit_is_applied() {
    let mut options = Options::default();
    options = options.with_header_size_limit(16 * 1024);
    let (h, calls, _rx) = counting_server(options).await;
    assert_eq!(
        raw_status(&h, &request_with_header("x-big", 20 * 1024))
            .await
            .status,
        431
    );
    assert_eq!(
        raw_status(&h, &request_with_header("x-big", 12 * 1024))
            .await
            .status,
        200
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn small_header_limit_is_exact() {
    // Any limit works, down to a few hundred bytes: hyper's max_header_size has no floor.
    let mut options = Options::default();
    options = options.with_header_size_limit(1024);
    let (h, _calls, _rx) = counting_server(options).await;
    assert_eq!(
        raw_status(&h, &request_with_header("x-big", 700))
            .await
            .status,
        200
    );
    assert_eq!(
        raw_status(&h, &request_with_header("x-big", 1200))
            .await
            .status,
        431
    );
}

#[tokio::test]
async fn content_length_over_the_limit_is_413_without_the_handler() {
    let mut options = Options::default();
    options = options.with_body_size_limit(1000);
    let (h, calls, _rx) = counting_server(options).await;
    // Only the head: the server must answer without waiting for the body.
    let resp = raw_status(
        &h,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");
    // At the limit: accepted.
    let mut req =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'b', 1000));
    let resp = raw_status(&h, &req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"1000");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn content_length_over_the_limit_is_413_over_h2() {
    let mut options = Options::default();
    options = options.with_body_size_limit(1000);
    let (h, calls, _rx) = counting_server(options).await;
    let mut c = h2_client(h.addr).await;
    let resp = within(
        "h2 POST",
        c.sender
            .send_request(h2_req(h.addr, "POST", "/", vec![b'x'; 2000])),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let resp = within(
        "h2 POST",
        c.sender
            .send_request(h2_req(h.addr, "POST", "/", vec![b'x'; 1000])),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_of(resp).await, "1000");
}

#[tokio::test]
async fn chunked_body_over_the_limit_fails_with_length_limit_error() {
    let mut options = Options::default();
    options = options.with_body_size_limit(1000);
    let (h, calls, mut rx) = counting_server(options).await;
    let chunk = "a".repeat(600);
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let resp = raw_status(&h, req.as_bytes()).await;
    assert_eq!(resp.status, 413);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a streamed body reaches the handler"
    );
    assert_eq!(
        within("read report", rx.recv()).await.unwrap(),
        Read::LengthLimit
    );
    // 2 x 500 = exactly the limit: fine.
    let chunk = "a".repeat(500);
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1f4\r\n{chunk}\r\n1f4\r\n{chunk}\r\n0\r\n\r\n"
    );
    let resp = raw_status(&h, req.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        within("read report", rx.recv()).await.unwrap(),
        Read::Ok(1000)
    );
}

#[tokio::test]
async fn trace_is_405_with_allow() {
    let (h, calls, _rx) = counting_server(Options::default()).await;
    let resp = raw_status(
        &h,
        b"TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some(DEFAULT_ALLOW));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connect_is_405() {
    let (h, calls, _rx) = counting_server(Options::default()).await;
    let mut stream = connect(h.addr).await;
    let head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    within(
        "write",
        tokio::io::AsyncWriteExt::write_all(&mut stream, head),
    )
    .await
    .unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some(DEFAULT_ALLOW));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_method_is_501() {
    let (h, calls, _rx) = counting_server(Options::default()).await;
    let resp = raw_status(
        &h,
        b"FOO / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 501);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn options_star_is_204_with_allow() {
    let (h, calls, _rx) = counting_server(Options::default()).await;
    let resp = raw_status(
        &h,
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("allow"), Some(DEFAULT_ALLOW));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // OPTIONS on a path is an ordinary allowed request.
    let resp = raw_status(
        &h,
        b"OPTIONS /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn custom_allowed_methods() {
    let mut options = Options::default();
    let purge = Method::from_bytes(b"PURGE").unwrap();
    options = options.with_allowed_methods(vec![Method::GET, Method::POST, purge]);
    let (h, calls, _rx) = counting_server(options).await;
    let mut c = h1_client(h.addr).await;
    let resp = within("DELETE", c.sender.send_request(h1_req("DELETE", "/", "")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST, PURGE");
    body_of(resp).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let resp = within("GET", c.sender.send_request(h1_req("GET", "/", "")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    body_of(resp).await;
    let resp = within("PURGE", c.sender.send_request(h1_req("PURGE", "/", "")))
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "an allowed extension method reaches the handler"
    );
    body_of(resp).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn method_answers_over_h2() {
    let (h, calls, _rx) = counting_server(Options::default()).await;
    let mut c = h2_client(h.addr).await;
    let resp = within(
        "TRACE",
        c.sender.send_request(h2_req(h.addr, "TRACE", "/", "")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], DEFAULT_ALLOW);
    let resp = within("FOO", c.sender.send_request(h2_req(h.addr, "FOO", "/", "")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 501);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_concurrent_stream_limit() {
    let mut options = Options::default();
    options = options.with_concurrent_stream_limit(2);
    let running = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (r, m, g) = (running.clone(), max.clone(), gate.clone());
    let mut h = serve(
        options,
        tower::service_fn(move |_req: Request<RequestBody>| {
            let (r, m, g, started_tx) = (r.clone(), m.clone(), g.clone(), started_tx.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                started_tx.send(now).unwrap();
                g.acquire().await.unwrap().forget();
                r.fetch_sub(1, Ordering::SeqCst);
                HandlerResult::Ok(ok("done"))
            }
        }),
    )
    .await;
    let mut c = h2_client(h.addr).await;
    let _client = h.next_client().await;
    // One request first, so the client has the server's SETTINGS (max 2 streams) before it
    // opens the six: streams opened before that are refused (REFUSED_STREAM), which hyper's
    // client does not retry.
    let warm_up = tokio::spawn(c.sender.send_request(h2_req(h.addr, "GET", "/", "")));
    assert_eq!(within("warm-up handler", started.recv()).await.unwrap(), 1);
    gate.add_permits(1);
    let resp = within("warm-up", warm_up)
        .await
        .unwrap()
        .expect("warm-up response");
    assert_eq!(body_of(resp).await, "done");
    eventually("warm-up handler finished", || {
        running.load(Ordering::SeqCst) == 0
    })
    .await;
    max.store(0, Ordering::SeqCst);
    let mut requests = Vec::new();
    for _ in 0..6 {
        let mut sender = c.sender.clone();
        let req = h2_req(h.addr, "GET", "/", "");
        requests.push(tokio::spawn(async move {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }));
    }
    // Two handlers start; each release lets exactly one more in.
    within("handler 1", started.recv()).await.unwrap();
    within("handler 2", started.recv()).await.unwrap();
    for i in 3..=6 {
        assert!(running.load(Ordering::SeqCst) <= 2);
        gate.add_permits(1);
        let now = within(&format!("handler {i}"), started.recv())
            .await
            .unwrap();
        assert!(now <= 2, "{now} handlers running at once");
    }
    gate.add_permits(2);
    for task in requests {
        let (status, body) = within("request", task).await.unwrap().expect("request ok");
        assert_eq!(status, 200);
        assert_eq!(body, "done");
    }
    assert_eq!(
        max.load(Ordering::SeqCst),
        2,
        "at most (and at some point exactly) 2 at once"
    );
    assert!(started.try_recv().is_err());
}
