//! [`Serve`]: how [`RemoteClient`](crate::RemoteClient) hands requests to a tower service.
//!
//! The request counts as handed over (pending) from the moment hyper has read its head, before
//! the service is ready: a service that waits in `poll_ready` (a concurrency limit, a buffer, a
//! rate limit) is working, and no clock of the peer's runs meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response, Version};
use http_body::Body;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::future::Upgrade;
use super::service::{prepare, Prepared};
use super::{RequestBody, ResponseBody, ResponseFuture, ResponseGuard};
use crate::client::ClientInfo;

/// A hyper service over a tower service, for one connection: counts, screens and annotates
/// each request (as [`ClientService`](super::ClientService) does), then waits for the tower
/// service to be ready and calls it. One clone of the service per request, as
/// `TowerToHyperService` does.
#[derive(Debug)]
pub(crate) struct Serve<S> {
    service: S,
    client: ClientInfo,
}

impl<S> Serve<S> {
    pub(crate) fn new(service: S, client: ClientInfo) -> Self {
        Serve { service, client }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Serve<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone,
    B: Body,
{
    type Response = Response<ResponseBody<B>>;
    type Error = S::Error;
    type Future = ServeFuture<S, S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        match prepare(&self.client, req) {
            Prepared::Local(response, guard) => ServeFuture {
                service: None,
                request: None,
                response: Some(ResponseFuture::local(response, guard)),
            },
            Prepared::Forward(req, guard, upgrade) => ServeFuture {
                service: Some(self.service.clone()),
                request: Some((req, guard, upgrade)),
                response: None,
            },
        }
    }
}

pin_project! {
    /// Waits for the service to be ready, calls it, and then for its response.
    pub(crate) struct ServeFuture<S, F> {
        service: Option<S>,
        request: Option<(Request<RequestBody>, ResponseGuard, Upgrade)>,
        #[pin]
        response: Option<ResponseFuture<F>>,
    }
}

impl<S, B> Future for ServeFuture<S, S::Future>
where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(response) = this.response.as_mut().as_pin_mut() {
                return response.poll(cx);
            }
            let (Some(service), Some(_)) = (this.service.as_mut(), this.request.as_ref()) else {
                panic!("ServeFuture polled after completion");
            };
            // On error the request and its guards are dropped with this future.
            ready!(service.poll_ready(cx))?;
            if let Some((req, guard, upgrade)) = this.request.take() {
                let http1 = req.version() <= Version::HTTP_11;
                let future = service.call(req);
                *this.service = None;
                this.response
                    .set(Some(ResponseFuture::new(future, guard, upgrade, http1)));
            }
        }
    }
}
