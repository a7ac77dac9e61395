use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::{RequestGuard, ResponseGuard};
use crate::BoxError;

pin_project! {
    /// The request body a service behind [`ClientLayer`](super::ClientLayer) gets.
    ///
    /// It is the connection's body (`hyper::body::Incoming` by default), limited to
    /// [`Options::body_size_limit`](crate::Options::body_size_limit): past it, reading fails with
    /// `http_body_util::LengthLimitError` (axum answers that with 413; over HTTP/1 the
    /// connection is closed after the response). The request counts as pending until the body
    /// has been read to the end, has failed, or is dropped.
    ///
    /// With the `http3` feature, an HTTP/3 request's body is a `RequestBody` too (the same
    /// type, so one service serves both): it reads the QUIC stream.
    #[derive(Debug)]
    pub struct RequestBody<B = Incoming> {
        #[pin]
        inner: Limited<Source<B>>,
        guard: Option<RequestGuard>,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn new(body: B, limit: usize, guard: Option<RequestGuard>) -> Self {
        RequestBody {
            inner: Limited::new(Source::Conn { body }, limit),
            guard,
        }
    }

    /// An HTTP/3 request's body.
    #[cfg(feature = "http3")]
    pub(crate) fn quic(
        body: Box<std::sync::Mutex<dyn QuicFrames<B>>>,
        limit: usize,
        guard: Option<RequestGuard>,
    ) -> Self {
        RequestBody {
            inner: Limited::new(Source::Quic { body }, limit),
            guard,
        }
    }
}

/// The frames of an HTTP/3 request body, as a body of `B`'s data (implemented for
/// `hyper::body::Incoming`'s, `Bytes`, with the `http3` feature).
pub(crate) trait QuicFrames<B>: Send {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>>
    where
        B: Body;

    fn is_end_stream(&self) -> bool;

    fn size_hint(&self) -> SizeHint;
}

pin_project! {
    /// Where a request body comes from: hyper's connection, or (HTTP/3) a QUIC stream (in a
    /// `Mutex`, never contended: polled through `&mut`, so that the body stays `Sync` as
    /// hyper's is). Without the `http3` feature, `Quic` is never made.
    #[project = SourceProj]
    #[cfg_attr(not(feature = "http3"), allow(dead_code))]
    pub(crate) enum Source<B> {
        Conn { #[pin] body: B },
        Quic { body: Box<std::sync::Mutex<dyn QuicFrames<B>>> },
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for Source<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Conn { body } => body.fmt(f),
            Source::Quic { .. } => f.write_str("QuicBody"),
        }
    }
}

impl<B> Body for Source<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            SourceProj::Conn { body } => body.poll_frame(cx).map_err(Into::into),
            SourceProj::Quic { body } => body
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Conn { body } => body.is_end_stream(),
            Source::Quic { body } => body
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Conn { body } => body.size_hint(),
            Source::Quic { body } => body
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .size_hint(),
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
        // HTTP/1: the probe under which this poll begins (see `State::body_pending`).
        let generation = match this.guard.as_ref() {
            Some(guard) if !guard.http2 => guard.client().state().probe_generation(),
            _ => 0,
        };
        let result = this.inner.as_mut().poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(guard)) = (&result, this.guard.as_ref()) {
            if guard.http2 {
                let n = frame.data_ref().map_or(0, Buf::remaining);
                guard.client().state().body_read(n);
            }
        }
        match &result {
            Poll::Pending => {
                if let Some(guard) = this.guard.as_mut() {
                    guard.set_waiting(true);
                    if !guard.http2 {
                        guard.client().state().body_pending(cx.waker(), generation);
                    }
                }
            }
            Poll::Ready(Some(Ok(_))) if !this.inner.is_end_stream() => {
                if let Some(guard) = this.guard.as_mut() {
                    guard.set_waiting(false);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if let Some(guard) = this.guard.take() {
                    if error.downcast_ref::<LengthLimitError>().is_some() {
                        guard.client().state().hit_body_limit();
                    }
                }
            }
            Poll::Ready(_) => {
                if let Some(mut guard) = this.guard.take() {
                    guard.finished = true;
                }
            }
        }
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
        guard: Option<ResponseGuard>,
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(body: B, mut guard: Option<ResponseGuard>) -> Self {
        if let Some(tracked) = guard.as_mut().filter(|g| g.track_owed) {
            if body.is_end_stream() {
                tracked.ended = true;
                guard = None;
            } else {
                // Until hyper asks for it, the body waits on the peer (HTTP/2: its window).
                tracked.set_owed(true);
            }
        }
        ResponseBody {
            inner: Some(body),
            guard,
        }
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn empty(guard: Option<ResponseGuard>) -> Self {
        if let Some(mut guard) = guard {
            guard.ended = true;
        }
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
        let mut this = self.project();
        let Some(mut body) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let result = body.as_mut().poll_frame(cx);
        match &result {
            // The handler is producing: not the peer's doing.
            Poll::Pending => {
                if let Some(guard) = this.guard.as_mut() {
                    guard.frame_sent(0);
                    guard.set_owed(false);
                }
            }
            // hyper holds a frame until the peer's window lets it through (HTTP/2), and asks
            // for the next one after that: until then the response waits on the peer. The
            // guard goes with the body, which hyper drops once the last frame is through.
            Poll::Ready(Some(Ok(frame))) => {
                let last = body.is_end_stream();
                if let Some(guard) = this.guard.as_mut() {
                    let n = frame.data_ref().map_or(0, Buf::remaining);
                    guard.produced(n);
                    guard.frame_sent(n);
                    guard.set_owed(true);
                    guard.ended |= last;
                }
            }
            // The end: nothing more to write.
            Poll::Ready(None) => {
                if let Some(mut guard) = this.guard.take() {
                    guard.ended = true;
                }
            }
            // An error: the stream is reset.
            Poll::Ready(Some(Err(_))) => drop(this.guard.take()),
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

#[cfg(test)]
mod tests {
    /// Handlers may hold a request body across threads, as hyper's own (the HTTP/3 source
    /// included).
    #[test]
    fn request_body_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::RequestBody>();
    }
}
