//! The sessions connected to this node, by client id.
//!
//! The registry is what makes a client id unique on a node: registering an
//! id that is connected returns the existing session's handle, which the
//! newcomer kicks and waits for before trying again (session takeover).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{watch, Notify};

use super::mailbox::Mailbox;
use crate::message::ClientId;

/// How other tasks reach a running session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Tells a registration apart from a later one with the same client id.
    pub connection_id: u64,
    /// Where the router posts deliveries.
    pub mailbox: Arc<Mailbox>,
    /// Asks the session to end because a newer connection took its id.
    pub kick: Arc<Notify>,
    /// Becomes true once the session has parked or discarded its state.
    pub finished: watch::Receiver<bool>,
}

/// Connected sessions by client id.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: RwLock<HashMap<ClientId, SessionHandle>>,
}

impl Registry {
    /// Read access for fan-out: one lock for a whole publish.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<ClientId, SessionHandle>> {
        self.sessions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<ClientId, SessionHandle>> {
        self.sessions.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `handle` for `client_id`, or returns the session that holds
    /// the id now (and registers nothing).
    pub fn register(
        &self,
        client_id: &ClientId,
        handle: SessionHandle,
    ) -> Result<(), SessionHandle> {
        let mut sessions = self.write();
        if let Some(existing) = sessions.get(client_id) {
            return Err(existing.clone());
        }
        sessions.insert(client_id.clone(), handle);
        Ok(())
    }

    /// Removes `client_id` if it is still registered by `connection_id`.
    pub fn remove(&self, client_id: &ClientId, connection_id: u64) {
        let mut sessions = self.write();
        if sessions
            .get(client_id)
            .is_some_and(|h| h.connection_id == connection_id)
        {
            sessions.remove(client_id);
        }
    }

    /// Number of connected sessions.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when no session is connected.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}
