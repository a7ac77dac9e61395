//! `ClientInfo` getters as a handler sees them, over HTTP/1.1 and h2c; ids; byte counters.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use common::*;
use http::{Request, Version};
use hyper_remote_client::{Address, ClientInfo, Options, RequestBody, Status};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// What a handler saw of its `ClientInfo`, captured inside the handler.
#[derive(Debug, Clone)]
struct Seen {
    id: u64,
    remote: Address,
    remote_port: Option<u16>,
    local: Address,
    local_port: Option<u16>,
    is_unix: bool,
    is_encrypted: bool,
    tls_none: bool,
    is_exported: bool,
    status: Status,
    is_closed: bool,
    body_size_limit: usize,
    version: Version,
    pending_requests: usize,
    pending_responses: usize,
    waiting: bool,
}

fn seen(req: &Request<RequestBody>) -> Seen {
    let c = req
        .extensions()
        .get::<ClientInfo>()
        .expect("ClientInfo in extensions");
    Seen {
        id: c.id().get(),
        remote: c.remote_address().clone(),
        remote_port: c.remote_port(),
        local: c.local_address().clone(),
        local_port: c.local_port(),
        is_unix: c.is_unix(),
        is_encrypted: c.is_encrypted(),
        tls_none: c.tls().is_none(),
        is_exported: c.is_exported(),
        status: c.status(),
        is_closed: c.is_closed(),
        body_size_limit: c.options().body_size_limit(),
        version: req.version(),
        pending_requests: c.pending_requests(),
        pending_responses: c.pending_responses(),
        waiting: c.is_waiting_on_response(),
    }
}

async fn reporting_server(options: Options) -> (Harness, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = serve(
        options,
        tower::service_fn(move |req: Request<RequestBody>| {
            let tx = tx.clone();
            async move {
                let s = seen(&req);
                let id = s.id;
                tx.send(s).unwrap();
                HandlerResult::Ok(ok(id.to_string()))
            }
        }),
    )
    .await;
    (h, rx)
}

fn custom_options() -> Options {
    let mut options = Options::default();
    options = options.with_body_size_limit(12_345);
    options
}

fn check_common(
    s: &Seen,
    h: &Harness,
    client_local: std::net::SocketAddr,
    server_side: &ClientInfo,
) {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(
        s.id,
        server_side.id().get(),
        "handler and accept loop see the same client"
    );
    assert_eq!(s.remote.ip(), Some(loopback));
    assert_eq!(
        s.remote,
        Address::Inet(client_local),
        "remote address = client's socket"
    );
    assert_eq!(s.remote_port, Some(client_local.port()));
    assert_eq!(s.local.ip(), Some(loopback));
    assert_eq!(
        s.local,
        Address::Inet(h.addr),
        "local address = listener address"
    );
    assert_eq!(s.local_port, Some(h.addr.port()));
    assert!(!s.is_unix);
    assert!(!s.remote.is_unix());
    assert!(!s.is_encrypted);
    assert!(s.tls_none);
    assert!(!s.is_exported);
    assert_eq!(s.status, Status::OPEN);
    assert!(!s.is_closed);
    assert_eq!(
        s.body_size_limit, 12_345,
        "the options passed to RemoteClient::tcp"
    );
    assert_eq!(
        s.pending_requests, 0,
        "GET without body is not a pending request"
    );
    assert_eq!(s.pending_responses, 1);
    assert!(s.waiting);
}

#[tokio::test]
async fn getters_over_http1() {
    let (mut h, mut seen_rx) = reporting_server(custom_options()).await;
    let mut c = h1_client(h.addr).await;
    let server_side = h.next_client().await;
    let resp = within("GET /", c.sender.send_request(h1_req("GET", "/", "")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_11);
    let body = body_of(resp).await;
    let s = within("handler report", seen_rx.recv()).await.unwrap();
    assert_eq!(body, s.id.to_string());
    assert_eq!(s.version, Version::HTTP_11);
    check_common(&s, &h, c.local, &server_side);
    // The handle the accept loop holds reports the same.
    assert_eq!(server_side.options().body_size_limit(), 12_345);
    assert_eq!(server_side.remote_port(), Some(c.local.port()));
    assert_eq!(
        server_side.remote_address().to_string(),
        c.local.to_string()
    );
}

#[tokio::test]
async fn getters_over_h2c() {
    let (mut h, mut seen_rx) = reporting_server(custom_options()).await;
    let mut c = h2_client(h.addr).await;
    let server_side = h.next_client().await;
    let resp = within(
        "GET / h2",
        c.sender.send_request(h2_req(h.addr, "GET", "/", "")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = body_of(resp).await;
    let s = within("handler report", seen_rx.recv()).await.unwrap();
    assert_eq!(body, s.id.to_string());
    assert_eq!(s.version, Version::HTTP_2);
    check_common(&s, &h, c.local, &server_side);
}

#[tokio::test]
async fn requests_on_one_connection_share_the_client() {
    let (mut h, mut seen_rx) = reporting_server(Options::default()).await;
    let mut c = h1_client(h.addr).await;
    let server_side = h.next_client().await;
    for _ in 0..3 {
        let resp = within("GET /", c.sender.send_request(h1_req("GET", "/", "")))
            .await
            .unwrap();
        body_of(resp).await;
        let s = within("report", seen_rx.recv()).await.unwrap();
        assert_eq!(s.id, server_side.id().get());
    }
    let mut c2 = h2_client(h.addr).await;
    let server_side2 = h.next_client().await;
    assert_ne!(server_side.id(), server_side2.id());
    for _ in 0..3 {
        let resp = within(
            "GET / h2",
            c2.sender.send_request(h2_req(h.addr, "GET", "/", "")),
        )
        .await
        .unwrap();
        body_of(resp).await;
        let s = within("report", seen_rx.recv()).await.unwrap();
        assert_eq!(s.id, server_side2.id().get());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_get_distinct_increasing_ids() {
    let (mut h, mut seen_rx) = reporting_server(Options::default()).await;
    let addr = h.addr;
    let mut from_responses = HashSet::new();
    for _batch in 0..20 {
        let mut tasks = Vec::new();
        for _ in 0..50 {
            tasks.push(tokio::spawn(async move {
                let reply = raw_exchange(
                    addr,
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await;
                let (resp, _) = parse_response(&reply).expect("a response");
                assert_eq!(resp.status, 200);
                String::from_utf8(resp.body)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            }));
        }
        for task in tasks {
            let id = within("connection task", task).await.unwrap();
            assert!(from_responses.insert(id), "id {id} seen twice");
        }
    }
    assert_eq!(from_responses.len(), 1000);
    // The accept loop sees them in accept order: strictly increasing.
    let mut accepted = Vec::new();
    for _ in 0..1000 {
        accepted.push(h.next_client().await.id().get());
    }
    assert!(
        accepted.windows(2).all(|w| w[0] < w[1]),
        "ids increase in accept order"
    );
    let accepted_set: HashSet<u64> = accepted.iter().copied().collect();
    assert_eq!(
        accepted_set, from_responses,
        "handlers see the ids the accept loop saw"
    );
    for _ in 0..1000 {
        within("report", seen_rx.recv()).await.unwrap();
    }
    assert!(seen_rx.try_recv().is_err());
}

#[tokio::test]
async fn byte_counters_match_the_wire() {
    let (mut h, _seen) = reporting_server(Options::default()).await;
    let request = b"GET /count HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut stream = connect(h.addr).await;
    let server_side = h.next_client().await;
    let closed = closed_signal(&server_side);
    stream.write_all(request).await.unwrap();
    let reply = read_to_eof(&mut stream).await.unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    wait_closed("on_close after Connection: close", closed).await;
    assert_eq!(
        server_side.bytes_read(),
        request.len() as u64,
        "bytes read = bytes sent"
    );
    assert_eq!(
        server_side.bytes_written(),
        reply.len() as u64,
        "bytes written = bytes received"
    );
    assert_eq!(server_side.status(), Status::CLOSED_RDWR);
}

#[test]
fn status_bits_match_amphp() {
    assert_eq!(Status::CLOSED_RD.bits(), 1);
    assert_eq!(Status::CLOSED_WR.bits(), 2);
    assert_eq!(Status::CLOSED_RDWR.bits(), 3);
    assert_eq!(Status::CLOSED_RD | Status::CLOSED_WR, Status::CLOSED_RDWR);
}
