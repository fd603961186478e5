//! The sessions connected to this node, by client id.
//!
//! The registry is what makes a client id unique on a node: registering an
//! id that is connected returns the existing session's handle, which the
//! newcomer kicks and waits for before trying again (session takeover).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::{watch, Notify};

pub mod mailbox;

use crate::message::ClientId;
use mailbox::Mailbox;

/// How other tasks reach a running session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Tells a registration apart from a later one with the same client id.
    pub connection_id: u64,
    /// Where the router posts deliveries.
    pub mailbox: Arc<Mailbox>,
    /// Asks the session to end (see [`SessionHandle::kick`]).
    pub kick: Arc<Notify>,
    /// Why it was kicked: a [`Kick`] as a number.
    pub kick_reason: Arc<AtomicU8>,
    /// Becomes true once the session has parked or discarded its state.
    pub finished: watch::Receiver<bool>,
    /// False for clean sessions: their deliveries live in memory only.
    pub persistent: bool,
}

/// Why a running session is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A newer connection on this node took its client id.
    TakenOver = 0,
    /// A connection on another node claims the session: park it and
    /// forget it here.
    Released = 1,
    /// This node was declared dead and a survivor owns its sessions now:
    /// end without writing anything.
    Fenced = 2,
}

impl SessionHandle {
    /// Asks the session to end for `reason`.
    pub fn kick(&self, reason: Kick) {
        self.kick_reason.store(reason as u8, Ordering::Relaxed);
        self.kick.notify_one();
    }

    /// The reason of the last [`Self::kick`].
    pub fn kick_reason(&self) -> Kick {
        match self.kick_reason.load(Ordering::Relaxed) {
            1 => Kick::Released,
            2 => Kick::Fenced,
            _ => Kick::TakenOver,
        }
    }
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

    /// Every connected session's handle.
    pub fn handles(&self) -> Vec<SessionHandle> {
        self.read().values().cloned().collect()
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
