//! The live client registry: every open client of a server, by id.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::client::{ClientId, ClientInfo};

#[derive(Debug, Default)]
pub(crate) struct Registry {
    clients: Mutex<HashMap<ClientId, ClientInfo>>,
    /// Set, under the lock, when a shutdown starts: clients registered later are shut down
    /// at once.
    shutting_down: Mutex<bool>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<ClientId, ClientInfo>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `client`; `true` if the server is shutting down, so the caller shuts it down.
    pub(crate) fn insert(&self, client: &ClientInfo) -> bool {
        let mut clients = self.lock();
        clients.insert(client.id(), client.clone());
        *self
            .shutting_down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn remove(&self, id: ClientId) {
        self.lock().remove(&id);
    }

    pub(crate) fn get(&self, id: ClientId) -> Option<ClientInfo> {
        self.lock().get(&id).cloned()
    }

    pub(crate) fn list(&self) -> Vec<ClientInfo> {
        let mut list: Vec<ClientInfo> = self.lock().values().cloned().collect();
        list.sort_by_key(ClientInfo::id);
        list
    }

    /// Marks the shutdown and returns the clients to shut down.
    pub(crate) fn begin_shutdown(&self) -> Vec<ClientInfo> {
        let clients = self.lock();
        *self
            .shutting_down
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        clients.values().cloned().collect()
    }
}
