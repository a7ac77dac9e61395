//! The layers: [`ClientLayer`] gives every request its [`ClientInfo`](crate::ClientInfo) and
//! counts it; [`ScreeningLayer`] gives amphp's answers (405, 413, 400...); `Serve` is both, and
//! the request body's limit and count, for [`RemoteClient`](crate::RemoteClient).

mod body;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod screening;
mod serve;
mod service;

pub use body::{RequestBody, ResponseBody};
pub use future::ResponseFuture;
pub use layer::ClientLayer;
pub use screening::{ScreenedResponse, Screening, ScreeningFuture, ScreeningLayer};
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
    pub(super) track_owed: bool,
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

    #[inline]
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
