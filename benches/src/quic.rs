//! The HTTP/3 servers of `benches/h3.sh` (issue 26), in `bench-h3` (feature `http3`), a
//! module of `server.rs` so that they share its handler, runtime choice and counting allocator.
//!
//! ```text
//! bench-h3 h3-bare|h3-crate PORT      (UDP 127.0.0.1:PORT)
//! bench-h3 bare-tls|crate-tls PORT    (TCP, as in bench-server, built with the crate's http3)
//! ```
//!
//! - `h3-bare`: quinn 0.11 + h3 0.0.8 + h3-quinn 0.0.10 as their examples use them: a quinn
//!   `Endpoint::server`, one task per QUIC connection (`h3::server::builder().build`, then
//!   `accept` in a loop), one task per request stream (`resolve_request`, the handler's
//!   future, `send_response`, `send_data`, `finish`). The handler reads the connection's remote
//!   address (taken at the handshake), as bare hyper's does.
//! - `h3-crate`: hyper-remote-client's `Server` with `Options::default()` serving the crate
//!   handler of `server.rs` (it reads `ClientInfo`) over a `QuicListener`, nothing else.
//!
//! Both use the same rustls configuration (ring, TLS 1.3, `TLS13_AES_128_GCM_SHA256` only, ALPN
//! `h3`, a self-signed certificate made by rcgen at start: what `http3::server_config` builds)
//! and the same QUIC transport: the crate's under its default options (idle timeout 60 s, 256
//! concurrent request streams, 8 unidirectional streams), quinn's defaults otherwise. Both send
//! the same answer: status 200, no header, one DATA frame `hello world`, FIN.
//!
//! `BENCH_IDLE_TIMEOUT_SECS` sets the QUIC idle timeout of both (the crate's `http2_timeout`).

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;

use super::{crate_handler, Spin, HELLO};

/// Serves `h3-KIND` on UDP `addr` until killed.
pub(super) async fn serve(kind: &str, addr: SocketAddr) {
    let tls = tls_config();
    match kind {
        "bare" => bare(addr, tls).await,
        "crate" => crate_server(addr, tls).await,
        other => panic!("unknown mode h3-{other:?}: h3-bare or h3-crate"),
    }
}

/// The QUIC idle timeout: the crate's default `http2_timeout` (60 s) unless
/// `BENCH_IDLE_TIMEOUT_SECS` says otherwise.
fn idle_timeout() -> Duration {
    std::env::var("BENCH_IDLE_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(60))
}

/// What `hyper_remote_client::http3::server_config(.., ClientAuth::None)` builds, made here
/// without the crate: ring with the one TLS 1.3 suite every QUIC stack has, ALPN `h3`, for a
/// self-signed certificate for localhost and 127.0.0.1.
fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("self-signed certificate");
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..rustls::crypto::ring::default_provider()
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate");
    config.alpn_protocols = vec![b"h3".to_vec()];
    Arc::new(config)
}

/// Bare h3-quinn: an accept loop, a task per connection, a task per request.
async fn bare(addr: SocketAddr, tls: Arc<rustls::ServerConfig>) {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from((*tls).clone())
        .expect("QUIC TLS configuration");
    // The transport the crate sets up under Options::default() (src/http3/listener.rs).
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle_timeout()).expect("idle timeout"),
        ))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(256))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(config, addr).expect("QUIC endpoint");
    println!("listening on {addr} (h3-bare, UDP)");
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            let remote = connection.remote_address();
            let Ok(mut h3) = h3::server::builder()
                .build::<_, Bytes>(h3_quinn::Connection::new(connection))
                .await
            else {
                return;
            };
            while let Ok(Some(resolver)) = h3.accept().await {
                tokio::spawn(async move {
                    let Ok((req, mut stream)) = resolver.resolve_request().await else {
                        return;
                    };
                    black_box(remote);
                    let Ok(response) =
                        Spin::new(req.uri().path(), || Ok::<_, Infallible>(Response::new(())))
                            .await;
                    drop(req);
                    if stream.send_response(response).await.is_err() {
                        return;
                    }
                    if stream.send_data(Bytes::from_static(HELLO)).await.is_err() {
                        return;
                    }
                    let _ = stream.finish().await;
                });
            }
        });
    }
}

/// hyper-remote-client's `Server`, default options, serving the crate handler over a
/// `QuicListener` only.
async fn crate_server(addr: SocketAddr, tls: Arc<rustls::ServerConfig>) {
    use hyper_remote_client::{http3::QuicListener, Options, Server};
    let quic = QuicListener::bind(addr, tls).expect("QUIC listener");
    let mut options = Options::default();
    if std::env::var_os("BENCH_IDLE_TIMEOUT_SECS").is_some() {
        options = options.with_http2_timeout(Some(idle_timeout()));
    }
    println!("listening on {addr} (h3-crate, UDP)");
    Server::new(options)
        .quic(quic)
        .serve(tower::service_fn(crate_handler))
        .await;
}
