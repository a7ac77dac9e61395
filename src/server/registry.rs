//! The live client registry: every open client of a server, by id.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::client::{ClientId, ClientInfo};

/// Where the server is in its life, as clients register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum State {
    #[default]
    Running,
    /// A graceful shutdown started: a client registering now is shut down at once.
    ShuttingDown,
    /// The shutdown deadline passed: a client registering now is closed at once.
    Forced,
}

#[derive(Debug, Default)]
struct Inner {
    clients: HashMap<ClientId, ClientInfo>,
    state: State,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `client`; how it must be treated now (shut down or closed at once).
    pub(crate) fn insert(&self, client: &ClientInfo) -> State {
        let mut inner = self.lock();
        inner.clients.insert(client.id(), client.clone());
        inner.state
    }

    pub(crate) fn remove(&self, id: ClientId) {
        self.lock().clients.remove(&id);
    }

    pub(crate) fn get(&self, id: ClientId) -> Option<ClientInfo> {
        self.lock().clients.get(&id).cloned()
    }

    pub(crate) fn list(&self) -> Vec<ClientInfo> {
        let mut list: Vec<ClientInfo> = self.lock().clients.values().cloned().collect();
        list.sort_by_key(ClientInfo::id);
        list
    }

    /// Marks the graceful shutdown; the clients to shut down.
    pub(crate) fn begin_shutdown(&self) -> Vec<ClientInfo> {
        self.switch(State::ShuttingDown)
    }

    /// Back to running (a rolled-back upgrade): clients registering now are served.
    pub(crate) fn resume(&self) {
        self.lock().state = State::Running;
    }

    /// Marks the forced close; the clients to close.
    pub(crate) fn force(&self) -> Vec<ClientInfo> {
        self.switch(State::Forced)
    }

    fn switch(&self, state: State) -> Vec<ClientInfo> {
        let mut inner = self.lock();
        inner.state = state;
        inner.clients.values().cloned().collect()
    }
}
