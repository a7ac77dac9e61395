//! Binary upgrade through the upgrade socket, in one process (two `Server`s, the real unix
//! socket and `SCM_RIGHTS` between them): no connection refused, no request failed, the old
//! server drains and returns by itself, and an idle keep-alive connection moves to the new one.
#![cfg(unix)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper_remote_client::{
    upgrade::{InheritedListener, Takeover},
    Listener, Options, RequestBody, Server, ServerHandle,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

mod common;
use common::*;

fn named(
    name: &'static str,
) -> impl Fn(Request<RequestBody>) -> std::future::Ready<Result<Response<String>, Infallible>> + Clone
{
    move |_req| std::future::ready(Ok(Response::new(name.to_owned())))
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

/// A server named "old" on 127.0.0.1:0, publishing its listener at `path`, accepting.
async fn old_server(
    path: &std::path::Path,
    options: Options,
) -> (
    std::net::SocketAddr,
    ServerHandle,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let old = Server::new(options)
        .listener(listener)
        .upgrade_socket(path)
        .unwrap();
    let handle = old.handle();
    let task = tokio::spawn(old.serve(tower::service_fn(named("old"))));
    handle.listening().await;
    (addr, handle, task)
}

/// A server named "new" taking over from the one at `path` (its listeners as they come).
async fn new_server(
    path: &std::path::Path,
    options: Options,
) -> (ServerHandle, tokio::task::JoinHandle<()>) {
    let mut takeover = within("takeover", Takeover::connect(path)).await.unwrap();
    let mut new = Server::new(options);
    for listener in takeover.take_listeners() {
        assert!(matches!(listener, InheritedListener::Tcp(_)));
        new = new.listener(Listener::from(listener));
    }
    let new = new
        .take_over(takeover)
        .expect("same steps")
        .upgrade_socket(path)
        .unwrap();
    let handle = new.handle();
    (
        handle,
        tokio::spawn(new.serve(tower::service_fn(named("new")))),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_and_idle_connections_move_to_the_new_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let options = Options::default().with_shutdown_timeout(Duration::from_secs(10));

    let (addr, old_handle, old_task) = old_server(&path, options.clone()).await;

    // An idle keep-alive connection, answered by the old server.
    let mut keep = connect(addr).await;
    keep.write_all(GET).await.unwrap();
    let first = read_response(&mut keep).await;
    assert_eq!(first.body, b"old");

    // New connections all along, each one request: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            let mut bodies = Vec::new();
            for _ in 0..100_000 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let reply = raw_exchange(
                    addr,
                    b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                )
                .await;
                match parse_response(&reply) {
                    Some((response, _)) if response.status == 200 => {
                        served.fetch_add(1, Ordering::Relaxed);
                        bodies.push(response.body);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            bodies
        })
    };
    eventually("some requests served by the old server", || {
        served.load(Ordering::Relaxed) >= 20
    })
    .await;

    // The new server takes the listener over and publishes it in turn.
    let (new_handle, new_task) = new_server(&path, options.clone()).await;

    // The old one drains and returns by itself.
    within("the old server to return", old_task).await.unwrap();
    let before = served.load(Ordering::Relaxed);
    eventually("requests served by the new server", || {
        served.load(Ordering::Relaxed) >= before + 20
    })
    .await;
    stop.store(true, Ordering::Release);
    let bodies = within("the load", load).await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(bodies.iter().any(|b| b == b"old") && bodies.iter().any(|b| b == b"new"));

    // The idle connection was handed over: served by the new server, on the same socket.
    keep.write_all(GET).await.unwrap();
    let second = read_response(&mut keep).await;
    assert_eq!(second.body, b"new");
    // The keep-alive one, and any load connection caught before its first byte.
    let old_stats = old_handle.stats();
    assert!(old_stats.handed_over >= 1, "{old_stats:?}");
    let handed = old_stats.handed_over;
    eventually("every connection handed over taken over", || {
        new_handle.stats().taken_over == handed
    })
    .await;
    // The upgrade socket is the new server's now.
    assert!(path.exists());
    new_handle.shutdown();
    within("the new server to return", new_task).await.unwrap();
}

#[tokio::test]
async fn a_taker_that_leaves_before_ready_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let (addr, handle, _old_task) = old_server(&path, Options::default()).await;
    // Takes the listeners, then goes away without serving.
    let takeover = within("takeover", Takeover::connect(&path)).await.unwrap();
    drop(takeover);
    let reply = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        reply.ends_with(b"old"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(!handle.is_shutting_down());
    // And a later taker still can.
    let mut again = within("takeover", Takeover::connect(&path)).await.unwrap();
    assert_eq!(again.take_listeners().len(), 1);
    handle.shutdown();
}

/// A connection whose handler left a request body unread is not handed over (hyper may not
/// have consumed it all: the new process would take its bytes for requests); it closes with
/// the old process instead, after its answer.
#[tokio::test]
async fn a_connection_with_an_unread_body_is_closed_not_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let (addr, old_handle, old_task) = old_server(&path, Options::default()).await;

    // A request whose body the handler never reads, then an idle keep-alive connection.
    let mut unread = connect(addr).await;
    unread
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(read_response(&mut unread).await.body, b"old");
    let mut idle = connect(addr).await;
    idle.write_all(GET).await.unwrap();
    assert_eq!(read_response(&mut idle).await.body, b"old");

    let (new_handle, _new_task) = new_server(&path, Options::default()).await;
    within("the old server to return", old_task).await.unwrap();

    assert_eq!(old_handle.stats().handed_over, 1, "only the idle one moved");
    // The other was closed by the old process: EOF, no answer from the new one.
    let rest = read_to_eof(&mut unread).await.unwrap_or_default();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    idle.write_all(GET).await.unwrap();
    assert_eq!(read_response(&mut idle).await.body, b"new");
    new_handle.shutdown();
}

/// A shutdown asked for while a hand-over runs stands, even if the successor then goes away
/// before it says it is healthy: the old server does not roll back into serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_the_hand_over_is_not_undone_by_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let (_addr, old, old_task) = old_server(&path, Options::default()).await;
    // A successor with a long probation, so that it is still on probation when it goes.
    let (new, new_task) = new_server(
        &path,
        Options::default().with_upgrade_probation(Duration::from_secs(60)),
    )
    .await;
    new.listening().await;
    common::eventually("the old server drains", || old.was_replaced()).await;
    old.graceful_shutdown(Some(Duration::from_secs(1)));
    // The successor goes away (its task, and with it its end of the upgrade stream).
    new_task.abort();
    let _ = new_task.await;
    within("the old server's serve returns", old_task)
        .await
        .expect("the old server's task");
}
