use std::task::{Context, Poll};

use http::header::{HeaderValue, ALLOW, CONNECTION, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use tower_service::Service;

use super::future::Upgrade;
use super::{ClientLayer, RequestBody, RequestGuard, ResponseBody, ResponseFuture, ResponseGuard};
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
    ResBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match prepare(&self.client, req) {
            Prepared::Local(response, guard) => ResponseFuture::local(response, guard),
            Prepared::Forward(req, guard, upgrade) => {
                let http1 = req.version() <= Version::HTTP_11;
                ResponseFuture::new(self.inner.call(req), guard, upgrade, http1)
            }
        }
    }
}

/// A request, counted and screened: answered by the crate, or on its way to the service.
pub(crate) enum Prepared<B> {
    Local(Response<()>, ResponseGuard),
    Forward(Request<RequestBody<B>>, ResponseGuard, Upgrade),
}

/// Counts the request as handed over (its response pending, and its body if it has one),
/// answers it if it must not reach the service, and otherwise gives it its [`ClientInfo`],
/// its body limit and its guards.
pub(crate) fn prepare<B: Body>(client: &ClientInfo, req: Request<B>) -> Prepared<B> {
    let state = client.state();
    let with_body = !req.body().is_end_stream();
    let http2 = req.version() >= Version::HTTP_2;
    state.set_version(req.version());
    state.request_started(with_body);
    let response_guard = ResponseGuard::new(client, http2);
    let request_guard = with_body.then(|| RequestGuard::new(client));
    let options = client.options();
    if let Some(response) = screen(&req, options) {
        // The body is never read: dropping its guard counts it done.
        drop(request_guard);
        return Prepared::Local(response, response_guard);
    }
    // hyper marks the requests it would upgrade (HTTP/1.1 with `Upgrade`, or CONNECT).
    let upgrade = if http2 || req.extensions().get::<OnUpgrade>().is_none() {
        Upgrade::Never
    } else if req.method() == Method::CONNECT {
        Upgrade::Connect
    } else {
        Upgrade::Switching
    };
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(client.clone());
    let body = RequestBody::new(body, options.body_size_limit, request_guard);
    Prepared::Forward(Request::from_parts(parts, body), response_guard, upgrade)
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
    let valid = if req.version() <= Version::HTTP_11 {
        valid_target(req)
    } else {
        valid_authority(req)
    };
    if !valid {
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
    if !valid_host(host.as_bytes()) {
        return false;
    }
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
    same_authority(host, authority, uri.scheme())
}

/// Whether a `Host` value names the same host and port as `authority` (default ports aside).
fn same_authority(
    host: &HeaderValue,
    authority: &http::uri::Authority,
    scheme: Option<&http::uri::Scheme>,
) -> bool {
    let default_port = if scheme == Some(&http::uri::Scheme::HTTPS) {
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

/// HTTP/2 (RFC 9113 §8.3.1): at most one `host`, well formed, naming the same host as
/// `:authority` when both are there.
fn valid_authority<B>(req: &Request<B>) -> bool {
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => false,
        (None, None) => true,
        (Some(host), None) => {
            valid_host(host.as_bytes())
                && req
                    .uri()
                    .authority()
                    .is_none_or(|authority| same_authority(host, authority, req.uri().scheme()))
        }
    }
}

/// RFC 9112 §3.2 and RFC 3986 §3.2.2: `host [":" port]`, where host is an IP literal in
/// brackets, or a name of unreserved characters and sub-delimiters. Stricter than RFC 3986
/// in two places no real host name needs: no comma (a comma means two `Host` values were
/// joined) and no percent-encoding (a way to smuggle bytes such as NUL past a proxy).
/// An empty value is allowed (RFC 9112: for a target without a host).
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        None => return true,
        Some(b'[') => {
            let Some(end) = value.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = std::str::from_utf8(&value[1..end]).ok();
            if literal
                .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
                .is_none()
            {
                return false;
            }
            match &value[end + 1..] {
                [] => (None, None),
                [b':', port @ ..] => (None, Some(port)),
                _ => return false,
            }
        }
        Some(_) => match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (Some(&value[..colon]), Some(&value[colon + 1..])),
            None => (Some(value), None),
        },
    };
    let name_ok = host.is_none_or(|name| {
        !name.is_empty()
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+;=".contains(&b))
    });
    let port_ok = port.is_none_or(|port| {
        port.len() <= 5
            && port.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(port)
                .ok()
                .is_none_or(|p| p.is_empty() || p.parse::<u16>().is_ok())
    });
    name_ok && port_ok
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
