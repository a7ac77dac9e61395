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
        },
        Local {
            response: Option<Response<()>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F, guard: PendingGuard) -> Self {
        ResponseFuture {
            kind: Kind::Inner {
                future,
                guard: Some(guard),
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
            KindProj::Inner { future, guard } => {
                // On error the guard is dropped with this future: the response is done.
                let response = ready!(future.poll(cx))?;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
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
