use std::task::{Context, Poll};

use http::{Extensions, Method, Request, Response, Version};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use tower_service::Service;

use super::future::Upgrade;
use super::{ClientLayer, ResponseBody, ResponseFuture, ResponseGuard};
use crate::client::ClientInfo;

/// The service [`ClientLayer`] builds: puts the connection's [`ClientInfo`] into every
/// request's extensions and counts the request in
/// [`ClientInfo::pending_responses`] until its response body has ended or is dropped. It
/// changes no answer and no request body (a handler keeps its `Request<Incoming>`).
///
/// A tower `Service` over a tower service, and a hyper `Service` over a hyper service
/// (`hyper::service::service_fn`), so it fits hyper's connection builders as it is:
///
/// ```no_run
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use hyper::body::Incoming;
/// use hyper::service::service_fn;
/// use hyper_remote_client::{ClientInfo, ClientIo, ClientService};
/// use hyper_util::rt::TokioIo;
///
/// async fn hello(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
///     let client = req.extensions().get::<ClientInfo>().expect("inserted by ClientService");
///     Ok(Response::new(format!("hello, {}\n", client.remote_address())))
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     let io = ClientIo::tcp(stream);
///     let service = ClientService::new(service_fn(hello), io.client().clone());
///     let io = TokioIo::new(io);
///     tokio::spawn(async move {
///         hyper::server::conn::http1::Builder::new()
///             .serve_connection(io, service)
///             .with_upgrades()
///             .await
///     });
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ClientService<S> {
    inner: S,
    client: ClientInfo,
}

impl<S> ClientService<S> {
    /// Wraps `inner` for the connection of `client`.
    pub fn new(inner: S, client: ClientInfo) -> Self {
        ClientService { inner, client }
    }

    /// A [`ClientLayer`] for `client`.
    pub fn layer(client: ClientInfo) -> ClientLayer {
        ClientLayer::new(client)
    }

    /// The client whose requests this service serves.
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Counts the request and annotates it; what its response future needs.
    fn start<B: Body>(&self, req: &mut Request<B>) -> (ResponseGuard, Upgrade, bool) {
        let state = self.client.state();
        state.set_version(req.version());
        state.request_started(false);
        let http2 = req.version() >= Version::HTTP_2;
        let guard = ResponseGuard::new(&self.client, req);
        let upgrade = upgrade_of(req);
        inject(&self.client, req.extensions_mut());
        (guard, upgrade, !http2)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (guard, upgrade, http1) = self.start(&mut req);
        ResponseFuture::new(self.inner.call(req), guard, upgrade, http1)
    }
}

impl<S, ReqBody, ResBody> hyper::service::Service<Request<ReqBody>> for ClientService<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn call(&self, mut req: Request<ReqBody>) -> Self::Future {
        let (guard, upgrade, http1) = self.start(&mut req);
        ResponseFuture::new(self.inner.call(req), guard, upgrade, http1)
    }
}

/// Which responses would hand the connection of `req` over: hyper marks the requests it would
/// upgrade (HTTP/1.1 with `Upgrade`, or `CONNECT`).
pub(crate) fn upgrade_of<B>(req: &Request<B>) -> Upgrade {
    if req.version() >= Version::HTTP_2 || req.extensions().get::<OnUpgrade>().is_none() {
        Upgrade::Never
    } else if req.method() == Method::CONNECT {
        Upgrade::Connect
    } else {
        Upgrade::Switching
    }
}

/// Puts the client into a request's extensions, replacing any already there (nothing upstream
/// can forge it); with the `axum` feature, also axum's `ConnectInfo<SocketAddr>` (IP
/// connections), so handlers written for `into_make_service_with_connect_info` keep working.
pub(crate) fn inject(client: &ClientInfo, extensions: &mut Extensions) {
    #[cfg(feature = "axum")]
    if let crate::Address::Inet(addr) = client.remote_address() {
        extensions.insert(axum::extract::ConnectInfo(*addr));
    }
    extensions.insert(client.clone());
}
