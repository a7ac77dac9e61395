use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Response, StatusCode};
use pin_project_lite::pin_project;

use super::{PendingGuard, ResponseBody};

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
            guard: Option<PendingGuard>,
            upgrade: Upgrade,
        },
        Local {
            response: Option<Response<()>>,
        },
    }
}

/// Which responses hand an HTTP/1 connection over (an upgrade).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// HTTP/2: no response exports the connection.
    Never,
    /// `101 Switching Protocols`.
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
    pub(crate) fn new(future: F, guard: PendingGuard, upgrade: Upgrade) -> Self {
        ResponseFuture {
            kind: Kind::Inner {
                future,
                guard: Some(guard),
                upgrade,
            },
        }
    }

    pub(crate) fn local(response: Response<()>) -> Self {
        ResponseFuture {
            kind: Kind::Local {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner {
                future,
                guard,
                upgrade,
            } => {
                // On error the guard is dropped with this future: the response is done.
                let response = ready!(future.poll(cx))?;
                if upgrade.exports(response.status()) {
                    if let Some(guard) = guard.as_ref() {
                        // hyper hands the connection over once this response is written.
                        guard.client().set_exported();
                    }
                }
                Poll::Ready(Ok(
                    response.map(|body| ResponseBody::new(body, guard.take()))
                ))
            }
            KindProj::Local { response } => {
                let response = response.take().unwrap_or_default();
                Poll::Ready(Ok(response.map(|()| ResponseBody::empty())))
            }
        }
    }
}
