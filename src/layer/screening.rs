use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, ALLOW, CONNECTION, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::Either;
use tower_layer::Layer;
use tower_service::Service;

use crate::options::Options;

/// A tower [`Layer`] that answers, from [`Options`], the requests amphp's server answers
/// itself, before they reach the service. [`Server`](crate::Server) and
/// [`RemoteClient::start`](crate::RemoteClient::start) apply it; add it to your own stack for
/// the same answers:
///
/// - a method not in [`Options::allowed_methods`]: 405 with `Allow` (501 for an unknown
///   method);
/// - `OPTIONS *`: 204 with `Allow`;
/// - a `Content-Length` over [`Options::body_size_limit`]: 413 with `Connection: close`
///   (streamed bodies: limit them with `http_body_util::Limited`; `Server` does);
/// - HTTP/1: a missing, duplicate or malformed `Host`, an absolute-form target naming another
///   host, an authority-form target without `CONNECT`: 400 with `Connection: close`; a
///   transfer coding other than `chunked`: 501;
/// - HTTP/2: two `host` fields, or one that disagrees with `:authority`: 400.
///
/// ```
/// use hyper_remote_client::{Options, layer::ScreeningLayer};
/// use tower_layer::Layer;
///
/// let service = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// });
/// let screened = ScreeningLayer::new(Options::default()).layer(service);
/// ```
#[derive(Clone, Debug)]
pub struct ScreeningLayer {
    options: Arc<Options>,
}

impl ScreeningLayer {
    /// Screening by `options`.
    pub fn new(options: impl Into<Arc<Options>>) -> Self {
        ScreeningLayer {
            options: options.into(),
        }
    }
}

impl<S> Layer<S> for ScreeningLayer {
    type Service = Screening<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Screening {
            inner,
            options: self.options.clone(),
        }
    }
}

/// The service [`ScreeningLayer`] builds.
#[derive(Clone, Debug)]
pub struct Screening<S> {
    inner: S,
    options: Arc<Options>,
}

impl<S> Screening<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A response of [`Screening`]: the service's, or the crate's own (an empty body).
pub type ScreenedResponse<B> = Response<Either<B, http_body_util::Empty<bytes::Bytes>>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Screening<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body,
{
    type Response = ScreenedResponse<ResBody>;
    type Error = S::Error;
    type Future = ScreeningFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match screen(&req, &self.options) {
            Some(response) => ScreeningFuture {
                inner: None,
                local: Some(response),
            },
            None => ScreeningFuture {
                inner: Some(self.inner.call(req)),
                local: None,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Screening`].
    #[derive(Debug)]
    pub struct ScreeningFuture<F> {
        #[pin]
        inner: Option<F>,
        local: Option<Response<()>>,
    }
}

impl<F, B, E> std::future::Future for ScreeningFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<ScreenedResponse<B>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(response) = this.local.take() {
            return Poll::Ready(Ok(
                response.map(|()| Either::Right(http_body_util::Empty::new()))
            ));
        }
        match this.inner.as_pin_mut() {
            Some(inner) => inner
                .poll(cx)
                .map(|result| result.map(|response| response.map(Either::Left))),
            None => panic!("ScreeningFuture polled after completion"),
        }
    }
}

/// The answer to a request that must not reach the service, if it is one.
pub(crate) fn screen<B: Body>(req: &Request<B>, options: &Options) -> Option<Response<()>> {
    let method = req.method();
    if !options.allowed_methods().contains(method) {
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
    if req.body().size_hint().lower() > options.body_size_limit() as u64 {
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
    // Most HTTP/2 requests carry no `host`: one lookup then.
    if !req.headers().contains_key(HOST) {
        return true;
    }
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
    match value.first() {
        None => return true,
        Some(b'[') => return valid_ip_literal(value),
        Some(_) => {}
    }
    // One pass: the name runs to the first byte the table refuses, which must be the colon
    // before the port (a second colon then fails the port: an unbracketed IPv6 address).
    match value.iter().position(|&b| !HOST_NAME[b as usize]) {
        None => true,
        Some(at) => value[at] == b':' && at > 0 && valid_port(&value[at + 1..]),
    }
}

/// `[IPv6]` with an optional `:port`.
fn valid_ip_literal(value: &[u8]) -> bool {
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
        [] => true,
        [b':', port @ ..] => valid_port(port),
        _ => false,
    }
}

/// A port: at most five digits, at most 65535 (empty: no port, RFC 3986 allows it).
fn valid_port(port: &[u8]) -> bool {
    if port.len() > 5 {
        return false;
    }
    let mut n: u32 = 0;
    for &b in port {
        if !b.is_ascii_digit() {
            return false;
        }
        n = n * 10 + u32::from(b - b'0');
    }
    n <= 65535
}

/// The bytes of a host name: unreserved characters and sub-delimiters, no comma.
static HOST_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

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

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn host_syntax() {
        for good in [
            "",
            "a",
            "a.example",
            "a.example:8080",
            "a.example:",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:80",
            "x_y-z~!$&'()*+;=",
            "a:65535",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?} is valid");
        }
        for bad in [
            "a,b",
            "x y",
            "a@b",
            "%00",
            "a%2eb",
            "[::1",
            "[::1]x",
            "[x]",
            "x:abc",
            "x:65536",
            "x:123456",
            ":80",
            "a:b:c",
            "::1",
            "a/b",
            "a?b",
            "a#b",
            "a:99999999999",
            "a:4294967296",
            "[::1]:99999999999",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is not valid");
        }
    }
}
