// The crate's front page is the README (its snippets are compiled by `ReadmeDoctests` below,
// with every feature, as CI runs the tests).
#![cfg_attr(not(doctest), doc = include_str!("../README.md"))]
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
