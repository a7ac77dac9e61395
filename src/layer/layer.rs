use tower_layer::Layer;

use super::ClientService;
use crate::client::ClientInfo;

/// A tower [`Layer`] that gives every request of one connection its [`ClientInfo`], as
/// tower-http's `AddExtensionLayer` would, and counts it in
/// [`ClientInfo::pending_responses`] until its response body has ended or is dropped.
///
/// It changes no answer and no request body. [`Server`](crate::Server) and
/// [`RemoteClient::start`](crate::RemoteClient::start) apply it themselves (and count request
/// bodies in [`ClientInfo::pending_requests`], which a layer cannot do without changing the
/// body type); use it with your own accept loop:
///
/// ```no_run
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use hyper_remote_client::{ClientInfo, ClientIo, ClientLayer};
/// use hyper_util::rt::TokioIo;
/// use hyper_util::service::TowerToHyperService;
/// use tower_layer::Layer;
///
/// async fn hello<B>(req: Request<B>) -> Result<Response<String>, Infallible> {
///     let client = req.extensions().get::<ClientInfo>().expect("inserted by ClientLayer");
///     Ok(Response::new(format!("hello, client {}\n", client.id())))
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let (stream, _) = listener.accept().await?;
/// let io = ClientIo::tcp(stream);
/// let service = ClientLayer::new(io.client().clone()).layer(tower::service_fn(hello));
/// hyper::server::conn::http1::Builder::new()
///     .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
///     .await
///     .ok();
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ClientLayer {
    client: ClientInfo,
}

impl ClientLayer {
    /// A layer for the connection of `client`.
    pub fn new(client: ClientInfo) -> Self {
        ClientLayer { client }
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService::new(inner, self.client.clone())
    }
}
