//! [`ClientLayer`]: the tower layer that gives every request its [`ClientInfo`].
//!
//! The layer wraps any tower service (a hyper `service_fn` through
//! [`TowerToHyperService`](hyper_util::service::TowerToHyperService), an axum `Router`, a
//! tower-http stack) and, for every request:
//!
//! - answers what must not reach the service: methods not in
//!   [`Options::allowed_methods`](crate::Options::allowed_methods) (405 with `Allow`, or 501 for
//!   unknown methods), `OPTIONS *` (204 with `Allow`), a `Content-Length` over
//!   [`Options::body_size_limit`](crate::Options::body_size_limit) (413);
//! - inserts the connection's [`ClientInfo`] into the request extensions (replacing any that is
//!   there already, so nothing upstream can forge it);
//! - counts the request in [`ClientInfo::pending_requests`] until its body has been read or
//!   dropped, and in [`ClientInfo::pending_responses`] until its response body has been written
//!   or dropped;
//! - limits the request body to `body_size_limit` while it streams.
//!
//! [`RemoteClient::start`](crate::RemoteClient::start) applies the layer itself; use it directly
//! when you run hyper's connection builders yourself:
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use hyper_remote_client::{ClientInfo, ClientIo, ClientLayer, RequestBody};
//! use hyper_util::rt::TokioIo;
//! use hyper_util::service::TowerToHyperService;
//! use tower_layer::Layer;
//!
//! async fn hello(req: Request<RequestBody>) -> Result<Response<String>, Infallible> {
//!     let client = req.extensions().get::<ClientInfo>().expect("inserted by ClientLayer");
//!     Ok(Response::new(format!("hello, client {}\n", client.id())))
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (stream, remote) = listener.accept().await?;
//! let client = ClientInfo::builder(remote, stream.local_addr()?).build();
//! let service = ClientLayer::new(client.clone()).layer(tower::service_fn(hello));
//! let io = TokioIo::new(ClientIo::new(stream, client));
//! hyper::server::conn::http1::Builder::new()
//!     .serve_connection(io, TowerToHyperService::new(service))
//!     .await
//!     .ok();
//! # Ok(())
//! # }
//! ```
//!
//! [`ClientInfo`]: crate::ClientInfo
//! [`ClientInfo::pending_requests`]: crate::ClientInfo::pending_requests
//! [`ClientInfo::pending_responses`]: crate::ClientInfo::pending_responses

mod body;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod serve;
mod service;

pub use body::{RequestBody, ResponseBody};
pub use future::ResponseFuture;
pub use layer::ClientLayer;
pub(crate) use serve::Serve;
pub use service::ClientService;

use crate::client::state::{OWED, REQUEST, RESPONSE};
use crate::client::ClientInfo;

/// Counts one request body as pending while it lives, and whether its handler waits for the
/// peer (for the request body clock).
#[derive(Debug)]
pub(crate) struct RequestGuard {
    client: ClientInfo,
    waiting: bool,
}

impl RequestGuard {
    /// For a request already counted by `State::request_started`.
    fn new(client: &ClientInfo) -> Self {
        RequestGuard {
            client: client.clone(),
            waiting: false,
        }
    }

    /// Marks the body as waiting for the peer, or not.
    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            self.client.state().body_waiting(waiting);
        }
    }

    fn client(&self) -> &ClientInfo {
        &self.client
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.set_waiting(false);
        self.client.state().done(REQUEST);
    }
}

/// Counts one response as pending while it lives; over HTTP/2, also whether its body waits for
/// hyper to ask for more (the peer's window is closed: the response clock runs).
#[derive(Debug)]
pub(crate) struct ResponseGuard {
    client: ClientInfo,
    track_owed: bool,
    owed: bool,
}

impl ResponseGuard {
    /// For a request already counted by `State::request_started`.
    fn new(client: &ClientInfo, track_owed: bool) -> Self {
        ResponseGuard {
            client: client.clone(),
            track_owed,
            owed: false,
        }
    }

    fn client(&self) -> &ClientInfo {
        &self.client
    }

    fn set_owed(&mut self, owed: bool) {
        if self.track_owed && self.owed != owed {
            self.owed = owed;
            let state = self.client.state();
            if owed {
                state.owe();
            } else {
                state.done(OWED);
            }
        }
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        let owed = if self.owed { OWED } else { 0 };
        self.client.state().done(RESPONSE + owed);
    }
}
