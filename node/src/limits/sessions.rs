//! `max-sessions`: how many sessions one node holds at once.
//!
//! A session is held while it is connected (the registry), while it is an
//! offline persistent session this node keeps, and while a handshake for
//! it is under way. The last is what makes the limit exact: a handshake
//! reserves a [`SessionSlot`] before its asynchronous work (taking over an
//! older connection, claiming the session in the store), under one lock
//! with the count of held sessions, and gives it back once the session is
//! registered or the handshake failed. Concurrent handshakes therefore
//! cannot each see room for one more.
//!
//! Guaranteed: the node never holds more than the limit. Not guaranteed:
//! that a session is admitted whenever fewer are held — for the instant
//! between a session's registration and the release of its slot it is
//! counted twice, and a reconnecting client that holds a session already
//! reserves a slot too (it is never refused for it), so a new session at
//! the limit can be refused a moment early.

use std::sync::{Mutex, MutexGuard};

/// What the node holds when a handshake asks for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The connecting client id holds a session here already (connected
    /// or offline): it needs no new room.
    pub known: bool,
    /// Sessions held: connected plus offline.
    pub sessions: usize,
}

/// The handshakes under way, against the limit.
#[derive(Debug)]
pub struct SessionSlots {
    /// `max-sessions`.
    max: usize,
    /// Slots reserved by handshakes not yet registered; the lock also
    /// serialises every reservation with the count it is checked against.
    pending: Mutex<usize>,
}

/// A reserved slot: counted until dropped.
#[derive(Debug)]
pub struct SessionSlot<'a> {
    slots: &'a SessionSlots,
}

impl SessionSlots {
    /// Room for `max` sessions.
    pub fn new(max: usize) -> SessionSlots {
        SessionSlots {
            max,
            pending: Mutex::new(0),
        }
    }

    fn pending(&self) -> MutexGuard<'_, usize> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a slot unless the held sessions (read by `held`, under the
    /// reservation lock) and the handshakes under way fill the limit. A
    /// client id the node knows always gets one.
    pub fn reserve(&self, held: impl FnOnce() -> Held) -> Option<SessionSlot<'_>> {
        let mut pending = self.pending();
        let held = held();
        if !held.known && held.sessions.saturating_add(*pending) >= self.max {
            return None;
        }
        *pending += 1;
        Some(SessionSlot { slots: self })
    }

    /// Handshakes holding a slot now.
    pub fn under_way(&self) -> usize {
        *self.pending()
    }
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let mut pending = self.slots.pending();
        *pending = pending.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_client(sessions: usize) -> impl FnOnce() -> Held {
        move || Held {
            known: false,
            sessions,
        }
    }

    #[test]
    fn handshakes_under_way_count_against_the_limit() {
        let slots = SessionSlots::new(3);
        let first = slots.reserve(new_client(1));
        let second = slots.reserve(new_client(1));
        assert!(first.is_some() && second.is_some());
        assert!(slots.reserve(new_client(1)).is_none());
        drop(first);
        assert_eq!(slots.under_way(), 1);
        assert!(slots.reserve(new_client(1)).is_some());
        assert_eq!(slots.under_way(), 1, "a dropped slot is given back");
    }

    #[test]
    fn a_known_client_is_never_refused() {
        let slots = SessionSlots::new(1);
        let held = || Held {
            known: true,
            sessions: 1,
        };
        let a = slots.reserve(held);
        let b = slots.reserve(held);
        assert!(a.is_some() && b.is_some());
        assert!(slots.reserve(new_client(0)).is_none());
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let slots = SessionSlots::new(5);
        let registered = Mutex::new(0usize);
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    let held = || Held {
                        known: false,
                        sessions: *registered.lock().unwrap(),
                    };
                    if let Some(slot) = slots.reserve(held) {
                        *registered.lock().unwrap() += 1;
                        drop(slot);
                    }
                });
            }
        });
        assert_eq!(*registered.lock().unwrap(), 5);
        assert_eq!(slots.under_way(), 0);
    }
}
