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

pub mod accept;
mod client;
mod detach;
pub mod driver;
#[cfg(feature = "axum")]
mod extract;
#[cfg(unix)]
mod handover;
#[cfg(feature = "http3")]
pub mod http3;
mod io;
pub mod layer;
mod lifecycle;
mod options;
#[cfg(feature = "proxy-protocol")]
pub mod proxy;
mod remote;
mod server;
#[cfg(feature = "metrics")]
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;

pub use client::TlsInfo;
pub use client::{Address, ClientId, ClientInfo, ClientInfoBuilder, PeerCredentials, Status};
pub use detach::{detach, DetachError, Detached, DetachedParts, OnDetach};
#[cfg(feature = "axum")]
pub use extract::MissingClientInfo;
#[cfg(unix)]
pub use io::Socketed;
pub use io::{BorrowedSocket, ClientIo, StreamSocket};
pub use layer::body::RequestBody;
pub use layer::layer::ClientLayer;
pub use layer::service::ClientService;
pub use lifecycle::TimeoutKind;
pub use options::{MinDataRate, Options};
pub use remote::{CloseReason, RemoteClient};
pub use server::{Listener, Server, ServerHandle, Stats};

/// Zero-downtime binary upgrades (unix): a new process takes the listening sockets (and the
/// idle HTTP/1 connections) of the running one over a unix socket
/// ([`Takeover`](crate::upgrade::Takeover), [`Server::upgrade_socket`]), or inherits them from
/// systemd ([`listen_fds`](crate::upgrade::listen_fds)). See the
/// README's "Zero-downtime restarts".
#[cfg(unix)]
pub mod upgrade {
    pub use crate::handover::{
        listen_fds, InheritedListener, ListenerSteps, ProxyHeader, Takeover, TakeoverError,
    };
}

/// The README's snippets, compiled as doctests (with every feature, as CI runs the tests).
#[cfg(all(doctest, feature = "tls", feature = "proxy-protocol", feature = "axum"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The error type of bodies and services in this crate: any boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
