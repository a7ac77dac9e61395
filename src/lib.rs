//! Per-connection client handles for hyper servers.
//!
//! hyper serves HTTP on a connection; this crate owns the connection around it and tells every
//! handler who is connected and over what (addresses, TLS), how busy the connection is (pending
//! requests and responses), whether it has closed, and lets it register a callback for the
//! close or close the connection itself. The handle is [`ClientInfo`], modelled on amphp's
//! `Client`, and it reaches handlers as a request extension put there by [`ClientLayer`].
//!
//! - [`RemoteClient`] is one accepted connection: [`RemoteClient::start`] serves it with the
//!   [`HttpDriver`] an [`HttpDriverFactory`] selects (HTTP/1.1, HTTP/2 by ALPN or prior
//!   knowledge), with any tower service behind a [`ClientLayer`], and enforces [`Options`]:
//!   timeouts, header and body size limits, allowed methods, HTTP/2 stream limit.
//! - [`ClientIo`] wraps the stream: it tracks the status bits and byte counts, refuses I/O after
//!   [`ClientInfo::close`], and closes the client when it is dropped.
//! - [`Server`] is the accept loop over `RemoteClient`s: TCP and unix listeners, either under
//!   TLS (`TlsAcceptor`, feature `tls`) and PROXY protocol (`ProxyProtocol`, feature
//!   `proxy-protocol`), connection and per-IP limits, a live registry, counters and graceful
//!   shutdown, through a [`ServerHandle`].
//! - [`detach()`] takes the raw connection over after an HTTP/1 upgrade, with the client still
//!   tracked until it is dropped.
//! - Observability: every connection is served in a `tracing` span `client` (its id, addresses,
//!   protocol, TLS version and ALPN), so a handler's log lines carry it; with feature
//!   `metrics`, connection and request metrics under OpenTelemetry names go to the `metrics`
//!   facade (see `telemetry`).
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use hyper_remote_client::{ClientInfo, DefaultHttpDriverFactory, Options, RemoteClient, RequestBody};
//!
//! async fn handler(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
//!     let client = req.extensions().get::<ClientInfo>().expect("inserted by ClientLayer");
//!     if req.uri().path() == "/close" {
//!         client.close(); // the connection ends now; no response is sent
//!     }
//!     Ok(Response::new(format!(
//!         "client {} from {}, {} response(s) pending\n",
//!         client.id(),
//!         client.remote_address(),
//!         client.pending_responses(),
//!     )))
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let options = Arc::new(Options::default());
//!     let drivers = Arc::new(DefaultHttpDriverFactory::new(&options));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     loop {
//!         let (stream, _) = listener.accept().await?;
//!         let Ok(client) = RemoteClient::tcp(stream, options.clone()) else { continue };
//!         client.client().on_close(|client| println!("client {} closed", client.id()));
//!         let drivers = drivers.clone();
//!         tokio::spawn(async move {
//!             client.start(&*drivers, tower::service_fn(handler)).await;
//!         });
//!     }
//! }
//! ```
#![deny(
    missing_docs,
    unreachable_pub,
    unsafe_code,
    missing_debug_implementations
)]
#![warn(rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accept;
mod client;
mod detach;
mod driver;
#[cfg(feature = "axum")]
mod extract;
#[cfg(unix)]
mod handover;
mod io;
mod layer;
mod lifecycle;
mod options;
#[cfg(feature = "proxy-protocol")]
mod proxy;
mod remote;
mod server;
#[cfg(feature = "metrics")]
pub mod telemetry;
#[cfg(feature = "tls")]
mod tls;

pub use accept::{Accept, AcceptError, Accepted, Chain};
pub use client::TlsInfo;
pub use client::{Address, ClientId, ClientInfo, ClientInfoBuilder, PeerCredentials, Status};
pub use detach::{detach, DetachError, Detached, DetachedParts, OnDetach};
pub use driver::{
    DefaultHttpDriverFactory, HttpDriver, HttpDriverFactory, InlineStreams, Protocols,
    StreamExecutor,
};
#[cfg(feature = "axum")]
pub use extract::MissingClientInfo;
#[cfg(unix)]
pub use handover::{
    listen_fds, InheritedListener, ListenerSteps, ProxyHeader, Takeover, TakeoverError,
};
pub use io::{BorrowedSocket, ClientIo, StreamSocket};
pub use layer::{
    ClientLayer, ClientService, RequestBody, ResponseBody, ResponseFuture, ScreenedResponse,
    Screening, ScreeningFuture, ScreeningLayer,
};
pub use lifecycle::TimeoutKind;
pub use options::{MinDataRate, Options};
#[cfg(feature = "proxy-protocol")]
pub use proxy::{IpNet, IpNetParseError, ProxyError, ProxyInfo, ProxyMode, ProxyProtocol};
pub use remote::{CloseReason, Handler, HandlerBody, RemoteClient};
pub use server::{Listener, Server, ServerHandle, Stats};
#[cfg(feature = "tls")]
pub use tls::{
    cert_and_key_from_pem, server_config, server_config_from_pem, server_config_with_sni,
    ClientAuth, TlsAcceptor, TlsError,
};

#[cfg(feature = "tls")]
pub use rustls;

/// The README's snippets, compiled as doctests (with every feature, as CI runs the tests).
#[cfg(all(doctest, feature = "tls", feature = "proxy-protocol", feature = "axum"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The error type of bodies and services in this crate: any boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
