//! One HTTP/3 request: its head resolved, handed to the service through the same
//! [`Serve`](crate::layer::Serve) as hyper's requests, and its response sent on the stream.

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::server::{RequestResolver, RequestStream};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tracing::debug;

use std::future::Future;
use std::sync::Arc;

use super::body::QuicBody;
use super::clocks::{Clocks, ResponseClock};
use super::PeerAddress;
use crate::layer::{Handler, HandlerBody, Serve};
use crate::TimeoutKind;

type SendStream = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// The sending half of a request stream, reset (`H3_INTERNAL_ERROR`) when dropped before its
/// end: on every error path, a handler's panic and a cancelled task included. A quinn stream
/// dropped unfinished would otherwise end cleanly (FIN), and a cut answer would look whole.
struct Sending {
    stream: SendStream,
    finished: bool,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if !self.finished {
            self.stream.stop_stream(Code::H3_INTERNAL_ERROR);
        }
    }
}

/// Serves one request stream to its end.
pub(crate) async fn serve<S, B>(
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    service: Serve<S>,
    connection: quinn::Connection,
    clocks: Arc<Clocks>,
    head_timeout: Option<std::time::Duration>,
) where
    S: Handler<B>,
    B: HandlerBody,
{
    // The head must be complete within `http2_timeout` of its stream's opening (else the
    // connection is closed, as an HTTP/1 head that takes too long).
    let mut resolving = std::pin::pin!(resolver.resolve_request());
    // Most heads have come with their stream's first packet: no timer for them.
    let first = resolving
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    let resolved = match (first, head_timeout) {
        (std::task::Poll::Ready(resolved), _) => resolved,
        (std::task::Poll::Pending, Some(timeout)) => {
            match tokio::time::timeout(timeout, resolving).await {
                Ok(resolved) => resolved,
                Err(_) => {
                    clocks.time_out(TimeoutKind::RequestHead);
                    return;
                }
            }
        }
        (std::task::Poll::Pending, None) => resolving.await,
    };
    // A malformed head, or one over the header size limit (h3 answered 431 itself), or a
    // stream the peer reset: this request only.
    let (req, stream) = match resolved {
        Ok(resolved) => resolved,
        Err(error) => {
            debug!(%error, "HTTP/3 request refused before the service");
            return;
        }
    };
    let (send, recv) = stream.split();
    let mut sending = Sending {
        stream: send,
        finished: false,
    };
    let length = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let head = req.method() == Method::HEAD;
    let mut req = req.map(|()| QuicBody::new(recv, length, clocks.body_clock()));
    *req.version_mut() = Version::HTTP_3;
    req.extensions_mut()
        .insert(PeerAddress(connection.remote_address()));
    let response = match service.call_quic(req).await {
        Ok(response) => response,
        Err(error) => {
            debug!(%error, "HTTP/3: the service failed: stream reset");
            return;
        }
    };
    let clock = clocks.response_clock();
    if let Err(error) = respond(&mut sending.stream, response, head, clock).await {
        debug!(%error, "HTTP/3: response not sent: stream reset");
        return;
    }
    sending.finished = true;
}

/// Sends `response` (head, body, trailers) and finishes the stream. No body goes with the
/// answer to a `HEAD`, nor with a 204 or a 304 (RFC 9110 §6.4.1), as hyper does.
async fn respond<B>(
    stream: &mut SendStream,
    response: Response<B>,
    head: bool,
    mut clock: Option<ResponseClock>,
) -> Result<(), crate::BoxError>
where
    B: Body,
    B::Error: Into<crate::BoxError>,
{
    let (mut parts, body) = response.into_parts();
    strip_connection_headers(&mut parts.headers);
    let bodiless =
        head || parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED;
    stream
        .send_response(Response::from_parts(parts, ()))
        .await?;
    if bodiless {
        drop(body);
        paced(&mut clock, 0, stream.finish()).await??;
        return Ok(());
    }
    let mut body = std::pin::pin!(body);
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Err(error.into()),
        };
        match frame.into_data() {
            Ok(mut data) => {
                let mut data = data.copy_to_bytes(data.remaining());
                // Under the response clock, in parts it can time (see `clocks::CHUNK`).
                let part = if clock.is_some() {
                    super::clocks::CHUNK
                } else {
                    usize::MAX
                };
                while !data.is_empty() {
                    let next = data.split_to(part.min(data.len()));
                    let len = next.len() as u64;
                    paced(&mut clock, len, stream.send_data(next)).await??;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers).await?;
                    break;
                }
            }
        }
    }
    // Also after trailers: `send_trailers` does not end the stream.
    paced(&mut clock, 0, stream.finish()).await??;
    Ok(())
}

/// `write` under the response's clock, if any: an error once the peer took too long.
async fn paced<F: std::future::Future>(
    clock: &mut Option<ResponseClock>,
    len: u64,
    write: F,
) -> Result<F::Output, crate::BoxError> {
    match clock {
        Some(clock) => clock
            .run(len, write)
            .await
            .ok_or_else(|| "the peer took the response slower than the minimum rate".into()),
        None => Ok(write.await),
    }
}

/// HTTP/3 has no connection-specific fields (RFC 9114 §4.2): a response carrying one is
/// malformed, and strict clients reset it. hyper drops them for HTTP/2 the same way.
fn strip_connection_headers(headers: &mut HeaderMap) {
    // Most answers carry none: one look at each name (no hashing) tells.
    let hop_by_hop = |name: &http::HeaderName| {
        name == CONNECTION
            || name == TRANSFER_ENCODING
            || name == UPGRADE
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    if let Some(listed) = headers.get(CONNECTION).cloned() {
        // Fields the `Connection` header names are hop-by-hop as well.
        if let Ok(listed) = listed.to_str() {
            for name in listed.split(',') {
                let name = name.trim();
                if !name.is_empty() {
                    headers.remove(name);
                }
            }
        }
    }
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}
