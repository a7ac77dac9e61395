use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use std::sync::atomic::Ordering;

use super::PendingGuard;
use crate::client::ClientInfo;
use crate::BoxError;

pin_project! {
    /// The request body a service behind [`ClientLayer`](super::ClientLayer) gets.
    ///
    /// It is the connection's body (`hyper::body::Incoming` by default), limited to
    /// [`Options::body_size_limit`](crate::Options::body_size_limit): past it, reading fails with
    /// `http_body_util::LengthLimitError` (axum answers that with 413). The request counts as
    /// pending until the body has been read to the end, has failed, or is dropped.
    #[derive(Debug)]
    pub struct RequestBody<B = Incoming> {
        #[pin]
        inner: Limited<B>,
        guard: Option<PendingGuard>,
        // Set while the last read returned `Pending`: the handler waits for the peer.
        waiting: Option<WaitingGuard>,
    }
}

/// Counts a request body as waiting for the peer (for the HTTP timeouts) while it lives.
#[derive(Debug)]
struct WaitingGuard(ClientInfo);

impl WaitingGuard {
    fn new(client: &ClientInfo) -> Self {
        client.inner.bodies_waiting.fetch_add(1, Ordering::AcqRel);
        WaitingGuard(client.clone())
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.inner.bodies_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn new(body: B, limit: usize, guard: Option<PendingGuard>) -> Self {
        RequestBody {
            inner: Limited::new(body, limit),
            guard,
            waiting: None,
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let result = this.inner.as_mut().poll_frame(cx);
        match &result {
            Poll::Pending => {
                if this.waiting.is_none() {
                    *this.waiting = this.guard.as_ref().map(|g| WaitingGuard::new(g.client()));
                }
                return result;
            }
            Poll::Ready(Some(Ok(_))) if !this.inner.is_end_stream() => {}
            Poll::Ready(_) => drop(this.guard.take()),
        }
        *this.waiting = None;
        result
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The response body of a service behind [`ClientLayer`](super::ClientLayer): the service's
    /// own body, or an empty one for the answers the layer gives itself (405, 413, ...). The
    /// response counts as pending until the body has ended, has failed, or is dropped.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: Option<B>,
        guard: Option<PendingGuard>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(body: B, guard: Option<PendingGuard>) -> Self {
        ResponseBody {
            inner: Some(body),
            guard,
        }
    }

    pub(crate) fn empty() -> Self {
        ResponseBody {
            inner: None,
            guard: None,
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(body) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let result = body.poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &result {
            drop(this.guard.take());
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
