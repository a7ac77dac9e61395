use std::task::{Context, Poll};

use http::header::{HeaderValue, ALLOW, CONNECTION, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tower_service::Service;

use super::future::Upgrade;
use super::{ClientLayer, PendingGuard, RequestBody, ResponseBody, ResponseFuture};
use crate::client::ClientInfo;
use crate::options::Options;

/// The service [`ClientLayer`] builds: inserts [`ClientInfo`], counts pending work, enforces
/// the request limits of [`Options`].
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
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientService<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let options = self.client.options();
        if let Some(response) = screen(&req, options) {
            return ResponseFuture::local(response);
        }
        let limit = options.body_size_limit;
        let upgrade = match (
            req.version() <= Version::HTTP_11,
            req.method() == Method::CONNECT,
        ) {
            (false, _) => Upgrade::Never,
            (true, false) => Upgrade::Switching,
            (true, true) => Upgrade::Connect,
        };
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(self.client.clone());
        // The request before its response (see `ClientInfo::is_waiting_on_response`).
        let request_guard = (!body.is_end_stream()).then(|| PendingGuard::request(&self.client));
        let response_guard = PendingGuard::response(&self.client);
        let body = RequestBody::new(body, limit, request_guard);
        ResponseFuture::new(
            self.inner.call(Request::from_parts(parts, body)),
            response_guard,
            upgrade,
        )
    }
}

/// The answer to a request that must not reach the service, if it is one.
fn screen<B: Body>(req: &Request<B>, options: &Options) -> Option<Response<()>> {
    let method = req.method();
    if !options.allowed_methods.contains(method) {
        if !is_standard(method) {
            return Some(status(StatusCode::NOT_IMPLEMENTED));
        }
        let mut response = status(StatusCode::METHOD_NOT_ALLOWED);
        insert_allow(&mut response, options);
        return Some(response);
    }
    if req.version() <= Version::HTTP_11 && !valid_target(req) {
        let mut response = status(StatusCode::BAD_REQUEST);
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Some(response);
    }
    if req.body().size_hint().exact().is_none() && !only_chunked(req) {
        // A transfer coding hyper does not decode: the body would reach the service encoded.
        let mut response = status(StatusCode::NOT_IMPLEMENTED);
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Some(response);
    }
    if method == Method::OPTIONS && req.uri().path() == "*" {
        let mut response = status(StatusCode::NO_CONTENT);
        insert_allow(&mut response, options);
        return Some(response);
    }
    if req.body().size_hint().lower() > options.body_size_limit as u64 {
        let mut response = status(StatusCode::PAYLOAD_TOO_LARGE);
        if req.version() <= Version::HTTP_11 {
            // The body stays unread: the connection cannot be reused.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        return Some(response);
    }
    None
}

/// What hyper leaves to the application: HTTP/1.1 needs exactly one `Host`, HTTP/1.0 at most
/// one (RFC 9112 §3.2); the authority-form (`host:port`) is for `CONNECT` only (§3.2.3). And,
/// as amphp does, an absolute-form target's authority must match `Host` (default ports
/// aside): RFC 9112 lets a server ignore `Host` there, but a mismatch is a request smuggled
/// past proxies that route by `Host`.
fn valid_target<B>(req: &Request<B>) -> bool {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return false,
        (None, None) => return req.version() != Version::HTTP_11,
        (Some(host), None) => host,
    };
    let uri = req.uri();
    let Some(authority) = uri.authority() else {
        return true;
    };
    if req.method() == Method::CONNECT {
        return true;
    }
    if uri.scheme().is_none() {
        return false; // authority-form without CONNECT
    }
    let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    let Ok(host) = host.to_str().map(|h| h.parse::<http::uri::Authority>()) else {
        return false;
    };
    host.is_ok_and(|host| {
        host.host().eq_ignore_ascii_case(authority.host())
            && host.port_u16().unwrap_or(default_port)
                == authority.port_u16().unwrap_or(default_port)
    })
}

/// Whether every `Transfer-Encoding` the request has is `chunked` (RFC 9112 §6.1: a server
/// answers 501 to a transfer coding it does not understand).
fn only_chunked<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(TRANSFER_ENCODING)
        .iter()
        .all(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .all(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
            })
        })
}

fn status(code: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = code;
    response
}

fn insert_allow(response: &mut Response<()>, options: &Options) {
    if let Ok(value) = HeaderValue::from_str(&options.allow_header()) {
        response.headers_mut().insert(ALLOW, value);
    }
}

fn is_standard(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ]
    .contains(method)
}
