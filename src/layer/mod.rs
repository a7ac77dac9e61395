//! The tower side: [`ClientLayer`] gives every request its [`ClientInfo`]
//! and counts it; [`ScreeningLayer`] gives amphp's answers
//! (405, 413, 400...); the futures and bodies they wrap; [`Handler`], the services a
//! [`Server`](crate::Server) and a [`RemoteClient`](crate::RemoteClient) take.

pub(crate) mod body;
mod future;
#[allow(clippy::module_inception)]
pub(crate) mod layer;
mod screening;
mod serve;
pub(crate) mod service;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use screening::{ScreenedResponse, Screening, ScreeningFuture, ScreeningLayer};
pub(crate) use serve::Serve;

pub use crate::remote::{Handler, HandlerBody};

use body::RequestBody;
use layer::ClientLayer;
use service::ClientService;

use crate::client::state::{OWED, REQUEST, RESPONSE};
use crate::client::ClientInfo;

/// Counts one request body as pending while it lives, and whether its handler waits for the
/// peer (for the request body clock).
#[derive(Debug)]
pub(crate) struct RequestGuard {
    client: ClientInfo,
    waiting: bool,
    /// The body reached its end (or was empty): dropped otherwise, it leaves bytes unread.
    pub(super) finished: bool,
    /// HTTP/2: count the body's bytes for the rate clock (the socket's carry control frames).
    pub(super) http2: bool,
}

impl RequestGuard {
    /// For a request already counted by `State::request_started`.
    fn new(client: &ClientInfo, http2: bool) -> Self {
        RequestGuard {
            client: client.clone(),
            waiting: false,
            finished: false,
            http2,
        }
    }

    /// Marks the body as waiting for the peer, or not.
    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            self.client.state().body_waiting(waiting);
        }
    }

    pub(super) fn client(&self) -> &ClientInfo {
        &self.client
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.set_waiting(false);
        if !self.finished {
            self.client.state().set_unread_body();
        }
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
    /// HTTP/2: the last frame's bytes, counted once hyper asks for the next one (the peer's
    /// window let it through) or the body is done.
    sent: usize,
    /// The body gave its last frame (or there was none): dropping the guard is the normal end.
    pub(super) ended: bool,
    /// HTTP/2: body bytes handed to hyper, counted in the connection's budget.
    produced: u64,
    #[cfg(feature = "metrics")]
    metric: Option<crate::telemetry::RequestMetric>,
}

impl ResponseGuard {
    /// For a request already counted by `State::request_started`.
    fn new<B>(client: &ClientInfo, req: &http::Request<B>) -> Self {
        ResponseGuard {
            client: client.clone(),
            track_owed: req.version() >= http::Version::HTTP_2,
            owed: false,
            sent: 0,
            ended: false,
            produced: 0,
            #[cfg(feature = "metrics")]
            metric: Some(crate::telemetry::RequestMetric::start(
                client,
                req.method(),
                req.version(),
            )),
        }
    }

    /// The status of the response (for the request metrics).
    #[inline]
    fn set_status(&mut self, _status: http::StatusCode) {
        #[cfg(feature = "metrics")]
        if let Some(metric) = self.metric.as_mut() {
            metric.set_status(_status);
        }
    }

    pub(super) fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// HTTP/2: `n` body bytes handed to hyper, to be written (the connection's budget).
    fn produced(&mut self, n: usize) {
        if self.track_owed && n > 0 {
            self.produced += n as u64;
            self.client.state().produced(n as u64);
        }
    }

    /// HTTP/2: hyper asks for more, so the last frame went through; `next` bytes follow.
    fn frame_sent(&mut self, next: usize) {
        if self.track_owed {
            if self.sent > 0 {
                self.client.state().body_written(self.sent);
            }
            self.sent = next;
        }
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
        self.frame_sent(0);
        let owed = if self.owed { OWED } else { 0 };
        let state = self.client.state();
        state.done(RESPONSE + owed);
        if self.track_owed && !self.ended {
            // HTTP/2: dropped on a stream's task before its end (a reset): nothing else may
            // wake the connection's watch to start its idle clock. What it produced may never
            // be written: it leaves the budget (all of it, erring on the lenient side).
            let _ = state.unproduced(self.produced);
            state.wake_watch();
        }
        #[cfg(feature = "metrics")]
        if let Some(metric) = self.metric.take() {
            metric.finish(&self.client);
        }
    }
}
