use tower_layer::Layer;

use super::ClientService;
use crate::client::ClientInfo;

/// A tower [`Layer`] that gives every request of one connection its [`ClientInfo`].
///
/// See the [module docs](crate::layer) for what it does to each request.
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
