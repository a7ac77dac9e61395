//! [`QuicBody`]: an HTTP/3 request's body, read from its QUIC stream.

use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::layer::body::QuicFrames;
use crate::BoxError;

/// The receiving half of a request stream, as an `http_body::Body` (DATA frames, then the
/// trailers, if any). The service sees it inside a [`RequestBody`](crate::RequestBody).
pub(crate) struct QuicBody {
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
    /// What the look at construction found (a first frame, or an error), for the first read.
    peeked: Option<Result<Frame<Bytes>, BoxError>>,
    /// The DATA frames are over: the trailers are next.
    data_done: bool,
    /// Nothing more after `peeked`.
    done: bool,
    /// From `Content-Length`, if any: the bytes still to come.
    length: Option<u64>,
    /// The minimum rate of the body's bytes while the handler waits for them.
    clock: Option<super::clocks::BodyClock>,
}

impl QuicBody {
    /// The body of a request stream. Looks once, without waiting, at what the stream holds
    /// already: a request whose stream ended with its headers (a `GET`) then has an empty body,
    /// which [`is_end_stream`](Body::is_end_stream) tells, so it is not counted as a pending
    /// request body (as hyper tells for HTTP/2 from `END_STREAM`).
    pub(crate) fn new(
        recv: RequestStream<h3_quinn::RecvStream, Bytes>,
        length: Option<u64>,
        clock: Option<super::clocks::BodyClock>,
    ) -> Self {
        let mut body = QuicBody {
            recv,
            peeked: None,
            data_done: false,
            done: false,
            length,
            clock,
        };
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(Some(first)) = body.poll_stream(&mut cx) {
            body.peeked = Some(first);
        }
        body
    }

    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match self.recv.poll_recv_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(mut data))) => {
                    let data = data.copy_to_bytes(data.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Ok(None)) => self.data_done = true,
                Poll::Ready(Err(error)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
        let trailers = match self.recv.poll_recv_trailers(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(trailers) => trailers,
        };
        self.done = true;
        Poll::Ready(match trailers {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(error) => Some(Err(error.into())),
        })
    }
}

impl Body for QuicBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match self.peeked.take() {
            Some(peeked) => Some(peeked),
            None => {
                let polled = self.poll_stream(cx);
                let this = &mut *self;
                if let Some(clock) = this.clock.as_mut() {
                    let bytes = match &polled {
                        Poll::Pending => None,
                        Poll::Ready(Some(Ok(frame))) => {
                            Some(frame.data_ref().map_or(0, |data| data.len() as u64))
                        }
                        Poll::Ready(_) => Some(0),
                    };
                    if clock.polled(cx, bytes) {
                        this.done = true;
                        this.clock = None;
                        return Poll::Ready(Some(Err(
                            "the request body came slower than the minimum rate".into(),
                        )));
                    }
                }
                std::task::ready!(polled)
            }
        };
        if let (Some(Ok(frame)), Some(length)) = (&frame, self.length.as_mut()) {
            // What is left to come, as hyper's body tells it.
            *length = length.saturating_sub(frame.data_ref().map_or(0, |d| d.len() as u64));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.peeked.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if Body::is_end_stream(self) {
            return SizeHint::with_exact(0);
        }
        match self.length {
            Some(length) if !self.data_done => SizeHint::with_exact(length),
            _ => SizeHint::default(),
        }
    }
}

impl QuicFrames<Incoming> for QuicBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        Incoming: Body,
    {
        Body::poll_frame(std::pin::Pin::new(self), cx)
    }

    fn is_end_stream(&self) -> bool {
        Body::is_end_stream(self)
    }

    fn size_hint(&self) -> SizeHint {
        Body::size_hint(self)
    }
}
