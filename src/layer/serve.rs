//! [`Serve`]: how [`RemoteClient`](crate::RemoteClient) hands requests to a tower service.
//!
//! The request counts as handed over (pending) from the moment hyper has read its head, before
//! the service is ready: a service that waits in `poll_ready` (a concurrency limit, a buffer, a
//! rate limit) is working, and no clock of the peer's runs meanwhile.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use http::{Request, Response, Version};
use http_body::Body;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::future::Upgrade;
use super::screening::screen;
use super::service::{inject, upgrade_of};
use super::{RequestBody, RequestGuard, ResponseBody, ResponseFuture, ResponseGuard};
use crate::client::ClientInfo;
use crate::BoxError;

/// A hyper service over a tower service, for one connection: counts each request (its response,
/// and its body), screens it ([`ScreeningLayer`](super::ScreeningLayer)'s answers), gives it its
/// [`ClientInfo`] ([`ClientLayer`](super::ClientLayer)'s) and its body limit, then waits for the
/// tower service to be ready and calls it. One clone of the service per request, as
/// `TowerToHyperService` does.
#[derive(Debug)]
pub(crate) struct Serve<S> {
    service: S,
    client: ClientInfo,
}

// hyper calls a service through `&self` and never pins it: `Serve` is never structurally
// pinned, so it may be `Unpin` whatever `S` is. An HTTP/1 connection is then `Unpin`, and can
// be taken apart for a handover (see `driver::Connection::take_parts`).
impl<S> Unpin for Serve<S> {}

impl<S> Serve<S> {
    pub(crate) fn new(service: S, client: ClientInfo) -> Self {
        Serve { service, client }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Serve<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ServeFuture<S, S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.forward(prepare(&self.client, req, RequestBody::new))
    }
}

impl<S, B> Serve<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
{
    /// Serves an HTTP/3 request: the same counting, screening and injection as hyper's
    /// requests get, and the same service.
    #[cfg(feature = "http3")]
    pub(crate) fn call_quic<Q>(&self, req: Request<Q>) -> ServeFuture<S, S::Future>
    where
        Q: Body + super::body::QuicFrames<Incoming> + 'static,
    {
        self.forward(prepare(&self.client, req, |body, limit, guard| {
            RequestBody::quic(Box::new(std::sync::Mutex::new(body)), limit, guard)
        }))
    }

    /// Hands a prepared request to the service (or answers it).
    fn forward(&self, prepared: Prepared<Incoming>) -> ServeFuture<S, S::Future> {
        match prepared {
            Prepared::Local(response, guard) => ServeFuture::Called {
                response: ResponseFuture::local(response, guard),
            },
            Prepared::Forward(req, guard, upgrade) => {
                let http1 = req.version() <= Version::HTTP_11;
                if !http1 && guard.client().state().over_budget() {
                    // HTTP/2: the connection holds more unwritten answers than its budget: the
                    // handler waits for the peer to read, as for a service not ready.
                    return ServeFuture::Ready {
                        service: self.service.clone(),
                        request: Some(Box::new((req, guard, upgrade))),
                    };
                }
                // Most services are ready at once: then the service is called here, on the
                // connection's task, where hyper calls a service of its own, and the future
                // hyper keeps (over HTTP/2 each stream's task, moved several times on its way
                // to tokio) holds the response future alone, not the request beside it. Polled
                // again with the task's waker if not ready, as a service allows. A panic of
                // the service fails this request alone, as it would in a stream's task.
                // The clone too: a service whose `clone` panics fails this request alone.
                let attempt = catch_unwind(AssertUnwindSafe(|| {
                    let mut service = self.service.clone();
                    let mut cx = Context::from_waker(Waker::noop());
                    match service.poll_ready(&mut cx) {
                        Poll::Ready(Ok(())) => Attempt::Called(service.call(req)),
                        Poll::Ready(Err(error)) => Attempt::Failed(error.into()),
                        Poll::Pending => Attempt::NotReady(service, req),
                    }
                }));
                match attempt {
                    Ok(Attempt::Called(future)) => ServeFuture::Called {
                        response: ResponseFuture::new(future, guard, upgrade, http1),
                    },
                    // The request and its guards are dropped here: its response is done.
                    Ok(Attempt::Failed(error)) => ServeFuture::Failed { error: Some(error) },
                    Err(_panic) => ServeFuture::Failed {
                        error: Some("the service panicked".into()),
                    },
                    Ok(Attempt::NotReady(service, req)) => ServeFuture::Ready {
                        service,
                        request: Some(Box::new((req, guard, upgrade))),
                    },
                }
            }
        }
    }
}

/// What calling a service at once came to (a value of the moment: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Attempt<S, F> {
    Called(F),
    Failed(BoxError),
    NotReady(S, Request<RequestBody>),
}

/// A request, counted and screened: answered by the crate, or on its way to the service.
enum Prepared<B> {
    Local(Response<()>, ResponseGuard),
    Forward(Request<RequestBody<B>>, ResponseGuard, Upgrade),
}

/// Counts the request as handed over (its response pending, and its body if it has one),
/// answers it if it must not reach the service, and otherwise gives it its [`ClientInfo`],
/// its body limit and its guards.
fn prepare<B: Body, T>(
    client: &ClientInfo,
    req: Request<B>,
    into_body: impl FnOnce(B, usize, Option<RequestGuard>) -> RequestBody<T>,
) -> Prepared<T> {
    let state = client.state();
    let with_body = !req.body().is_end_stream();
    let http2 = req.version() >= Version::HTTP_2;
    state.set_version(req.version());
    state.request_started(with_body);
    let response_guard = ResponseGuard::new(client, &req);
    let request_guard = with_body.then(|| RequestGuard::new(client, http2));
    let options = client.options();
    let upgrade = upgrade_of(&req);
    if upgrade != Upgrade::Never {
        // hyper keeps this upgrade pending to the connection's end, answered 101 or not.
        state.upgrade_asked();
    }
    if let Some(response) = screen(&req, options) {
        // The body is never read: dropping its guard counts it done.
        drop(request_guard);
        return Prepared::Local(response, response_guard);
    }
    let (mut parts, body) = req.into_parts();
    inject(client, &mut parts.extensions);
    let body = into_body(body, options.body_size_limit(), request_guard);
    Prepared::Forward(Request::from_parts(parts, body), response_guard, upgrade)
}

pin_project! {
    /// The response of a service that was ready when the request came (the usual case), or the
    /// wait for a service that was not: then the request waits, boxed, so that the future stays
    /// the size of the first case.
    #[project = ServeProj]
    pub(crate) enum ServeFuture<S, F> {
        Ready {
            service: S,
            request: Option<Box<(Request<RequestBody>, ResponseGuard, Upgrade)>>,
        },
        Called {
            #[pin]
            response: ResponseFuture<F>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<S, B> Future for ServeFuture<S, S::Future>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let called = match self.as_mut().project() {
                ServeProj::Called { response } => return response.poll(cx).map_err(Into::into),
                ServeProj::Failed { error } => {
                    let Some(error) = error.take() else {
                        panic!("ServeFuture polled after completion");
                    };
                    return Poll::Ready(Err(error));
                }
                ServeProj::Ready { service, request } => {
                    if let Some((req, guard, _)) = request.as_deref() {
                        if req.version() >= Version::HTTP_2
                            && !guard.client().state().poll_budget(cx.waker())
                        {
                            return Poll::Pending;
                        }
                    }
                    // On error the request and its guards are dropped with this future.
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(request) = request.take() else {
                        panic!("ServeFuture polled after completion");
                    };
                    let (req, guard, upgrade) = *request;
                    let http1 = req.version() <= Version::HTTP_11;
                    ResponseFuture::new(service.call(req), guard, upgrade, http1)
                }
            };
            self.set(ServeFuture::Called { response: called });
        }
    }
}
