//! `ClientInfo` as an axum extractor (feature `axum`).

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use crate::client::ClientInfo;

/// The request has no [`ClientInfo`]: it was not served through a
/// [`ClientLayer`](crate::ClientLayer) (a [`Server`](crate::Server) or
/// [`RemoteClient`](crate::RemoteClient)). Answered with 500.
#[derive(Debug, thiserror::Error)]
#[error("no ClientInfo in the request extensions: serve the router with hyper-remote-client")]
pub struct MissingClientInfo;

impl IntoResponse for MissingClientInfo {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// With the `axum` feature, a handler takes `client: ClientInfo` as an argument.
///
/// In handler tests, insert a [`ClientInfo::builder`] handle into the request's extensions
/// (what axum's `MockConnectInfo` does for `ConnectInfo`).
impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = MissingClientInfo;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ClientInfo>()
            .cloned()
            .ok_or(MissingClientInfo)
    }
}

/// `Option<ClientInfo>`: `None` where the request did not come through a
/// [`ClientLayer`](crate::ClientLayer).
impl<S: Send + Sync> OptionalFromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<ClientInfo>().cloned())
    }
}
