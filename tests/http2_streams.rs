//! HTTP/2 streams and the tasks they run on (`Options::http2_inline_streams`): a stream whose
//! response is ready at once is answered on its connection's task; one that has to wait gets a
//! task of its own and does not hold the connection's other streams; a panic in a handler ends
//! its stream alone; with the option off every stream is a task.

use std::convert::Infallible;
use std::sync::Arc;

use http::Request;
use hyper_remote_client::{ClientInfo, Options, RequestBody};
use tokio::sync::Notify;

mod common;
use common::*;

/// `/id`: the id of the task the handler runs on. `/wait`: waits until `/release` is called,
/// then answers its task's id. `/panic`: panics in the handler's first poll. `/count`: the
/// connection's pending responses (this one included).
fn service(
    release: Arc<Notify>,
) -> impl hyper_remote_client::Handler<http_body_util::Full<bytes::Bytes>> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ready_at_once_is_answered_on_its_connections_task() {
    let harness = serve(Options::default(), service(Arc::default())).await;
    let addr = harness.addr;
    let mut one = h2_client(addr).await;
    let mut other = h2_client(addr).await;

    let first = get(&mut one, addr, "/id").await;
    assert!(first.starts_with("Some("), "{first}");
    for _ in 0..4 {
        assert_eq!(
            get(&mut one, addr, "/id").await,
            first,
            "same connection, same task"
        );
    }
    assert_ne!(
        get(&mut other, addr, "/id").await,
        first,
        "another connection"
    );
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
    let connection_task = get(&mut client, addr, "/id").await;

    // `/wait` answers only once `/release`, a later stream of the same connection, has run.
    let waiting = client.sender.send_request(h2_req(addr, "GET", "/wait", ""));
    let waiting = tokio::spawn(waiting);
    // The connection goes on serving meanwhile.
    assert_eq!(get(&mut client, addr, "/id").await, connection_task);
    assert_eq!(get(&mut client, addr, "/release").await, "released");

    let response = within("the waiting stream", waiting)
        .await
        .unwrap()
        .expect("the waiting stream is answered");
    let waited_on = String::from_utf8(body_of(response).await.to_vec()).unwrap();
    assert!(waited_on.starts_with("Some("), "{waited_on}");
    assert_ne!(
        waited_on, connection_task,
        "it went on in a task of its own"
    );
    assert_eq!(get(&mut client, addr, "/count").await, "1/0");
}

#[tokio::test]
async fn a_panic_in_a_handler_ends_its_stream_alone() {
    let harness = serve(Options::default(), service(Arc::default())).await;
    let addr = harness.addr;
    let mut client = h2_client(addr).await;

    for _ in 0..3 {
        let failed = within(
            "the panicking stream",
            client
                .sender
                .send_request(h2_req(addr, "GET", "/panic", "")),
        )
        .await;
        assert!(failed.is_err(), "the stream is reset: {failed:?}");
        // The connection, its other streams and its counters go on.
        assert_eq!(get(&mut client, addr, "/count").await, "1/0");
    }
    assert!(!client.conn.is_finished(), "the connection is still open");
}
