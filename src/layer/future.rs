use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::{HeaderValue, ALT_SVC, CONNECTION};
use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use super::{ResponseBody, ResponseGuard};

pin_project! {
    /// The response future of [`ClientService`](super::ClientService).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Inner {
            #[pin]
            future: F,
            guard: Option<ResponseGuard>,
            upgrade: Upgrade,
            http1: bool,
            // HTTP/2: the connection's budget of unwritten response bytes let this one start.
            started: bool,
        },
        // Boxed: the crate's own answers (screening) are rare, and hyper keeps room for this
        // future per connection.
        Local {
            response: Option<Box<Response<()>>>,
            guard: Option<ResponseGuard>,
        },
    }
}

/// Which responses hand an HTTP/1 connection over (an upgrade), as hyper decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// HTTP/2, or an HTTP/1 request that asked for no upgrade: no response exports the
    /// connection (hyper writes a `101` to such a request and closes).
    Never,
    /// A request with `Upgrade`: `101 Switching Protocols`.
    Switching,
    /// A `CONNECT` request: `2xx` (and `101`).
    Connect,
}

impl Upgrade {
    fn exports(self, status: StatusCode) -> bool {
        match self {
            Upgrade::Never => false,
            Upgrade::Switching => status == StatusCode::SWITCHING_PROTOCOLS,
            Upgrade::Connect => status == StatusCode::SWITCHING_PROTOCOLS || status.is_success(),
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F, guard: ResponseGuard, upgrade: Upgrade, http1: bool) -> Self {
        ResponseFuture {
            kind: Kind::Inner {
                future,
                guard: Some(guard),
                upgrade,
                http1,
                started: http1,
            },
        }
    }

    pub(crate) fn local(response: Response<()>, guard: ResponseGuard) -> Self {
        ResponseFuture {
            kind: Kind::Local {
                response: Some(Box::new(response)),
                guard: Some(guard),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner {
                future,
                guard,
                upgrade,
                http1,
                started,
            } => {
                if !*started {
                    // HTTP/2: while the connection holds more unwritten answers than its budget,
                    // a new stream waits for the peer to read before its handler runs.
                    if let Some(guard) = guard.as_ref() {
                        if !guard.client().state().poll_budget(cx.waker()) {
                            return Poll::Pending;
                        }
                    }
                    *started = true;
                }
                // On error the guard is dropped with this future: the response is done.
                let mut response = ready!(future.poll(cx))?;
                if let Some(guard) = guard.as_mut() {
                    guard.set_status(response.status());
                    alt_svc(guard, &mut response);
                    let state = guard.client().state();
                    if upgrade.exports(response.status()) {
                        // hyper hands the connection over once this response is written.
                        state.set_exported();
                    } else if *http1 && state.body_limit_hit() {
                        // The rest of a body over the limit is not read: the connection
                        // cannot be reused.
                        response
                            .headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                Poll::Ready(Ok(
                    response.map(|body| ResponseBody::new(body, guard.take()))
                ))
            }
            KindProj::Local { response, guard } => {
                let mut response = response.take().map(|boxed| *boxed).unwrap_or_default();
                if let Some(guard) = guard.as_mut() {
                    guard.set_status(response.status());
                    alt_svc(guard, &mut response);
                }
                Poll::Ready(Ok(response.map(|()| ResponseBody::empty(guard.take()))))
            }
        }
    }
}

/// Puts [`Options::alt_svc`](crate::Options::alt_svc) on an answer over TLS (HTTP/1.1 or
/// HTTP/2), unless the service set one.
#[inline]
fn alt_svc<B>(guard: &ResponseGuard, response: &mut Response<B>) {
    let client = guard.client();
    let Some(value) = client.options().alt_svc() else {
        return;
    };
    if client.is_encrypted()
        && client.http_version() != Some(http::Version::HTTP_3)
        && !response.headers().contains_key(ALT_SVC)
    {
        response.headers_mut().insert(ALT_SVC, value.clone());
    }
}
