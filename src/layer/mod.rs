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
mod service;

pub use body::{RequestBody, ResponseBody};
pub use future::ResponseFuture;
pub use layer::ClientLayer;
pub use service::ClientService;

use std::sync::atomic::Ordering;

use crate::client::ClientInfo;

/// Counts one request (or response) as pending while it lives.
#[derive(Debug)]
pub(crate) struct PendingGuard {
    client: ClientInfo,
    request: bool,
    /// A request body whose last read returned `Pending`: its handler waits for the peer
    /// (counted in `bodies_waiting`, for the HTTP timeouts).
    waiting: bool,
}

impl PendingGuard {
    pub(crate) fn request(client: &ClientInfo) -> Self {
        client.inner.pending_requests.fetch_add(1, Ordering::AcqRel);
        PendingGuard {
            client: client.clone(),
            request: true,
            waiting: false,
        }
    }

    pub(crate) fn response(client: &ClientInfo) -> Self {
        let inner = &client.inner;
        // One writer, the task serving the connection: load and store are enough.
        let started = inner.requests_started.load(Ordering::Relaxed);
        inner.requests_started.store(started + 1, Ordering::Relaxed);
        inner.pending_responses.fetch_add(1, Ordering::AcqRel);
        PendingGuard {
            client: client.clone(),
            request: false,
            waiting: false,
        }
    }

    /// Marks the request body as waiting for the peer, or not.
    pub(crate) fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            let counter = &self.client.inner.bodies_waiting;
            if waiting {
                counter.fetch_add(1, Ordering::AcqRel);
            } else {
                counter.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub(crate) fn client(&self) -> &ClientInfo {
        &self.client
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let inner = &self.client.inner;
        let counter = if self.request {
            &inner.pending_requests
        } else {
            &inner.pending_responses
        };
        counter.fetch_sub(1, Ordering::AcqRel);
        self.set_waiting(false);
    }
}
