//! HTTP/3 (feature `http3`): a [`QuicListener`] that a [`Server`](crate::Server) serves beside
//! its TCP and unix listeners, with the same tower service, the same [`Options`](crate::Options)
//! and the same [`ClientInfo`](crate::ClientInfo) in every request. QUIC is quinn's, HTTP/3 is
//! h3's (h3-quinn between them).
//!
//! ```no_run
//! # async fn run(tls: std::sync::Arc<hyper_remote_client::tls::rustls::ServerConfig>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::convert::Infallible;
//! use hyper_remote_client::{http3::QuicListener, ClientInfo, Options, RequestBody, Server};
//!
//! async fn hello(req: http::Request<RequestBody>) -> Result<http::Response<String>, Infallible> {
//!     let client = req.extensions().get::<ClientInfo>().expect("inserted by the server");
//!     // HTTP/3.0 over QUIC, HTTP/2.0 or HTTP/1.1 over TCP: the same handler.
//!     Ok(http::Response::new(format!("{:?} from {}\n", req.version(), client.remote_address())))
//! }
//!
//! Server::new(Options::default())
//!     .quic(QuicListener::bind("127.0.0.1:4433".parse()?, tls)?)
//!     .serve(tower::service_fn(hello))
//!     .await;
//! # Ok(())
//! # }
//! ```
//!
//! # What a request's `ClientInfo` holds over HTTP/3
//!
//! - [`remote_address`](crate::ClientInfo::remote_address): the UDP address the connection came
//!   from, as at the handshake. QUIC lets a client move (connection migration, a NAT
//!   rebinding): the address of the moment a request came is in the request's extensions as
//!   [`PeerAddress`]. [`local_address`](crate::ClientInfo::local_address): the address the
//!   packets were sent to (its IP as the Initial packet says, where the platform tells it;
//!   otherwise the socket's), with the socket's port.
//! - [`is_encrypted`](crate::ClientInfo::is_encrypted) is `true`; [`tls`](crate::ClientInfo::tls):
//!   protocol `"TLSv1.3"`, ALPN `h3`, the SNI name, the client's certificates. The cipher suite:
//!   quinn 0.11 does not tell which one was negotiated, so it is reported only when the
//!   configuration allows a single TLS 1.3 suite (as [`server_config`] builds it); otherwise
//!   [`cipher_name`](crate::TlsInfo::cipher_name) is empty and the bits 0.
//! - [`http_version`](crate::ClientInfo::http_version) and every request's version: `HTTP/3.0`.
//! - [`pending_requests`](crate::ClientInfo::pending_requests) and
//!   [`pending_responses`](crate::ClientInfo::pending_responses): counted as for HTTP/2 (one
//!   request per stream; a request whose stream ended with its head has no pending body).
//! - [`status`](crate::ClientInfo::status) is `CLOSED_RDWR` once the QUIC connection is closed
//!   (QUIC has no half-close of a connection); [`on_close`](crate::ClientInfo::on_close) runs
//!   once, and [`closed`](crate::ClientInfo::closed) resolves, when the QUIC connection has
//!   ended and its task let go of it.
//! - [`close`](crate::ClientInfo::close) sends CONNECTION_CLOSE (`H3_NO_ERROR`) at once, from
//!   any thread; requests in flight are cut. [`shutdown`](crate::ClientInfo::shutdown) sends
//!   GOAWAY: the requests accepted are answered, new ones refused (`H3_REQUEST_REJECTED`, which
//!   clients retry), then the connection closes once the client closes it (at most
//!   [`Options::shutdown_timeout`](crate::Options::shutdown_timeout) later).
//! - [`bytes_read`](crate::ClientInfo::bytes_read) / [`bytes_written`](crate::ClientInfo::bytes_written):
//!   the QUIC connection's UDP payload bytes so far (QUIC headers, encryption and
//!   retransmissions included), read live from quinn.
//! - Not over HTTP/3: [`detach`](crate::detach) (it returns
//!   [`DetachError::Http3`](crate::DetachError::Http3): extended CONNECT and WebTransport are not
//!   offered), the half-close clock (QUIC has no half-close).
//!
//! # Clocks
//!
//! As over TCP, where they apply: [`Options::http2_timeout`](crate::Options::http2_timeout) is
//! QUIC's idle timeout (no packet at all), and also the time a connection may go with no
//! request in flight (PINGs and other control frames do not count, as for HTTP/2), and the time
//! a request stream's head may take; [`Options::min_request_body_rate`](crate::Options::min_request_body_rate)
//! holds while a handler waits for a request body, and
//! [`Options::min_response_rate`](crate::Options::min_response_rate) while a response waits on
//! the peer, per request stream (a response is timed in parts of 16 KiB, each allowed its own
//! size at the rate on top of the credit the clock holds: quinn tells progress only as a part
//! goes). A clock that runs out closes the QUIC connection (CONNECTION_CLOSE, `H3_NO_ERROR`,
//! reason `timeout`), counted in [`Stats`](crate::Stats) by phase and in `http3_timeouts`.
//!
//! # The server loop
//!
//! Admission is the TCP listeners': a new QUIC connection (its first Initial packet) takes a
//! slot under [`Options::connection_limit`](crate::Options::connection_limit) and
//! [`Options::connections_per_ip`](crate::Options::connections_per_ip), **shared with the TCP
//! connections** (one count for both); over a limit it is refused (CONNECTION_REFUSED) and
//! counted in [`Stats`](crate::Stats) as a TCP connection would be. Without
//! [`QuicListener::with_retry`] a UDP source address can be spoofed, so a flood can fill
//! another address's per-IP count. A handshake that fails or takes longer than
//! [`Options::tls_setup_timeout`](crate::Options::tls_setup_timeout) is counted as a TLS
//! handshake failure or timeout. The registry ([`ServerHandle::clients`](crate::ServerHandle::clients))
//! lists HTTP/3 clients with the others, and [`ServerHandle::close`](crate::ServerHandle::close)
//! closes them. A graceful shutdown sends GOAWAY on every connection, lets the requests accepted
//! finish, and closes what is left at the deadline; then the endpoint is closed.
//! [`ServerHandle::listening`](crate::ServerHandle::listening) includes the UDP address.
//!
//! In a binary upgrade ([`Server::upgrade_socket`](crate::Server::upgrade_socket), unix), the
//! UDP socket goes to the new process with the other listeners
//! ([`Takeover::take_quic_sockets`](crate::upgrade::Takeover::take_quic_sockets), then
//! [`QuicListener::inherit`]): the new process reads it, and passes the datagrams of the old
//! process's connections on to it, which finishes them. So every `QuicListener` issues
//! connection IDs of 9 bytes whose first byte names its process.

mod body;
mod clocks;
mod connection;
mod listener;
mod request;
#[cfg(unix)]
pub(crate) mod routing;

pub(crate) use connection::{client_info, serve, End};
#[cfg(unix)]
pub use listener::InheritedQuic;
pub(crate) use listener::QuicTls;
pub use listener::{QuicListener, QuicListenerError};

/// The peer's address when the request came, in every HTTP/3 request's extensions. It differs
/// from [`ClientInfo::remote_address`](crate::ClientInfo::remote_address) (the address at the
/// handshake) once the client has moved: QUIC connections survive a change of address
/// (connection migration, NAT rebinding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress(pub std::net::SocketAddr);

/// Closes a QUIC connection at once: CONNECTION_CLOSE with `H3_NO_ERROR`.
pub(crate) fn close_now(connection: &quinn::Connection) {
    connection.close(quinn::VarInt::from_u32(0x100), b"closed");
}

/// A rustls configuration for a [`QuicListener`], as [`tls::server_config`](crate::tls::server_config)
/// builds one for TCP (ring provider, `client_auth`), but TLS 1.3 only with the one suite every
/// QUIC implementation has (`TLS13_AES_128_GCM_SHA256`), and ALPN `h3`: then
/// [`TlsInfo::cipher_name`](crate::TlsInfo::cipher_name) is known (quinn 0.11 does not report
/// the suite it negotiated).
pub fn server_config(
    cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    client_auth: crate::tls::ClientAuth,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..rustls::crypto::ring::default_provider()
    };
    let mut config =
        crate::tls::config_builder_with(provider, &[&rustls::version::TLS13], client_auth)?
            .with_single_cert(cert_chain, key)?;
    config.alpn_protocols = vec![b"h3".to_vec()];
    Ok(config)
}
