//! Acceptors of one's own, alone and chained before the crate's TLS step, under `Server`.

mod common;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use http::{Request, Response};
use hyper_remote_client::{
    accept::{Accept, AcceptError, Accepted},
    ClientInfo, Listener, Options, RequestBody, Server, ServerHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Lets `allow` connections through, then refuses the rest; counts what it saw.
#[derive(Clone)]
struct Gate {
    allow: usize,
    seen: Arc<AtomicUsize>,
}

impl Accept<TcpStream> for Gate {
    type Stream = TcpStream;
    type Future = Ready<Result<Accepted<TcpStream>, AcceptError>>;

    fn accept(&self, accepted: Accepted<TcpStream>) -> Self::Future {
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        ready(if n < self.allow {
            Ok(accepted)
        } else {
            Err(AcceptError::Refused("closed for the day".into()))
        })
    }
}

async fn hello(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
    let client = req.extensions().get::<ClientInfo>().expect("ClientInfo");
    Ok(Response::new(format!("tls={}", client.is_encrypted())))
}

async fn run(listener: Listener) -> ServerHandle {
    let server = Server::new(Options::default()).listener(listener);
    let handle = server.handle();
    tokio::spawn(server.serve(tower::service_fn(hello)));
    handle
}

#[tokio::test]
async fn an_acceptor_of_ones_own_lets_through_and_refuses() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let gate = Gate {
        allow: 1,
        seen: seen.clone(),
    };
    let handle = run(Listener::tcp(tcp).acceptor(gate)).await;

    let first = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        first.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    assert!(first.ends_with(b"tls=false"));

    // The second is refused before HTTP: closed without a byte, counted.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut rest = Vec::new();
    let _ = within("refused", second.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    eventually("the refusal is counted", || {
        handle.stats().acceptor_refused == 1
    })
    .await;
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    eventually("nothing left open", || handle.connection_count() == 0).await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn a_step_of_ones_own_then_tls() {
    use hyper_remote_client::tls::rustls::pki_types::ServerName;
    let (acceptor, connector) = common::tls::self_signed();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let gate = Gate {
        allow: usize::MAX,
        seen: seen.clone(),
    };
    let handle = run(Listener::tcp(tcp).acceptor(gate.then(acceptor))).await;

    let stream = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = within("handshake", connector.connect(name, stream))
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = within("response", tls.read_to_end(&mut response)).await;
    assert!(
        response.ends_with(b"tls=true"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the own step ran first");

    // Plain HTTP into the chain fails the TLS step: counted as a handshake failure.
    let plain = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(plain.is_empty() || !plain.starts_with(b"HTTP/1.1 200"));
    eventually("the failed handshake is counted", || {
        handle.stats().tls_handshake_failures == 1
    })
    .await;
}
