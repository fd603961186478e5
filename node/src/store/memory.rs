//! The embedded store: everything in this process's memory.
//!
//! Each persistent session's offline queue is bounded by a [`QueueBound`]
//! (messages, and bytes of topic plus payload): a delivery beyond it is
//! refused and counted, and what is queued is never evicted. The
//! deliveries a session parks itself are kept whole even beyond the bound
//! (they were accepted while it was connected); they count against it, so
//! what arrives after them is refused until the client takes them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{ClaimRequest, QueueOutcome, SessionClaim, SessionOwner, Store, StoreError};
use crate::limits::queue::{queued_size, QueueBound, QueueFull};
use crate::message::{ClientId, Delivery, Message, Qos};
use crate::retained::memory::MemoryRetained;
use crate::retained::{RetainOutcome, RetainedLimits};
use crate::session_state::{Progress, SessionState};
use crate::subscription::Subscription;

/// A persistent session as the memory store holds it.
#[derive(Debug, Default)]
struct StoredSession {
    /// The current owner's epoch.
    epoch: u64,
    /// Parked state; `None` while a connection owns the session.
    parked: Option<SessionState>,
    /// Deliveries that arrived while the client was offline.
    offline: OfflineQueue,
}

/// A persistent session's deliveries waiting for its client, with their
/// total size.
#[derive(Debug, Default)]
struct OfflineQueue {
    deliveries: VecDeque<Delivery>,
    /// Sum of [`queued_size`] over `deliveries`.
    bytes: usize,
}

impl OfflineQueue {
    /// Queues `delivery` unless `bound` refuses it.
    fn push(&mut self, delivery: Delivery, bound: QueueBound) -> Result<(), QueueFull> {
        let size = queued_size(&delivery);
        bound.admits(self.deliveries.len(), self.bytes, size)?;
        self.bytes += size;
        self.deliveries.push_back(delivery);
        Ok(())
    }

    /// Takes everything queued, oldest first.
    fn take(&mut self) -> VecDeque<Delivery> {
        self.bytes = 0;
        std::mem::take(&mut self.deliveries)
    }

    /// Replaces the queue with `deliveries`, whole, whatever their size.
    fn replace(&mut self, deliveries: VecDeque<Delivery>) {
        self.bytes = deliveries.iter().map(queued_size).sum();
        self.deliveries = deliveries;
    }
}

/// Sessions and retained messages in memory, for a single node.
pub struct MemoryStore {
    sessions: Mutex<HashMap<ClientId, StoredSession>>,
    /// Retained messages, indexed by topic level.
    retained: Mutex<MemoryRetained>,
    /// Bound of each session's offline queue.
    queue_bound: QueueBound,
    next_epoch: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    /// An empty store whose offline queues each hold at most what
    /// `queue_bound` allows.
    pub fn new(queue_bound: QueueBound) -> MemoryStore {
        MemoryStore {
            sessions: Mutex::new(HashMap::new()),
            retained: Mutex::new(MemoryRetained::new(RetainedLimits::default())),
            queue_bound,
            next_epoch: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The same store with `limits` on its retained messages.
    pub fn with_retained_limits(self, limits: RetainedLimits) -> MemoryStore {
        MemoryStore {
            retained: Mutex::new(MemoryRetained::new(limits)),
            ..self
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<ClientId, StoredSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn retained(&self) -> MutexGuard<'_, MemoryRetained> {
        self.retained.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim_session(&self, request: &ClaimRequest) -> Result<SessionClaim, StoreError> {
        let client_id = &request.client_id;
        let epoch = self
            .next_epoch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let owner = SessionOwner {
            client_id: client_id.clone(),
            epoch,
        };
        let mut sessions = self.sessions();
        let previous = sessions.remove(client_id).map(|mut stored| {
            let mut state = stored.parked.take().unwrap_or_default();
            state.pending.extend(stored.offline.take());
            state
        });
        if request.persistent {
            sessions.insert(
                client_id.clone(),
                StoredSession {
                    epoch,
                    ..StoredSession::default()
                },
            );
        }
        Ok(SessionClaim { owner, previous })
    }

    async fn update_subscriptions(
        &self,
        _owner: &SessionOwner,
        _added: &[(String, Subscription)],
        _removed: &[String],
    ) -> Result<(), StoreError> {
        // The connected session holds its subscriptions; parking stores them.
        Ok(())
    }

    async fn drain_offline(
        &self,
        owner: &SessionOwner,
        _after: Option<&str>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut sessions = self.sessions();
        Ok(match sessions.get_mut(&owner.client_id) {
            Some(stored) if stored.epoch == owner.epoch => stored.offline.take().into(),
            _ => Vec::new(),
        })
    }

    async fn record_progress(
        &self,
        _owner: &SessionOwner,
        _progress: &Progress,
    ) -> Result<bool, StoreError> {
        // The node holds the session; parking stores what is unfinished.
        Ok(true)
    }

    async fn release_incoming_qos2(
        &self,
        _owner: &SessionOwner,
        _packet_ids: &[u16],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn park_session(
        &self,
        owner: &SessionOwner,
        mut state: SessionState,
    ) -> Result<(), StoreError> {
        let mut sessions = self.sessions();
        let Some(stored) = sessions.get_mut(&owner.client_id) else {
            return Ok(());
        };
        if stored.epoch != owner.epoch {
            return Ok(());
        }
        // Deliveries queued while the session was being parked are newer
        // than the ones it parked itself.
        state.pending.extend(stored.offline.take());
        stored.offline.replace(std::mem::take(&mut state.pending));
        stored.parked = Some(state);
        Ok(())
    }

    async fn discard_session(&self, owner: &SessionOwner) -> Result<bool, StoreError> {
        let mut sessions = self.sessions();
        let newer = sessions
            .get(&owner.client_id)
            .is_some_and(|s| s.epoch != owner.epoch);
        if !newer {
            sessions.remove(&owner.client_id);
        }
        Ok(!newer)
    }

    async fn session_epoch(&self, client_id: &ClientId) -> Result<Option<u64>, StoreError> {
        Ok(self.sessions().get(client_id).map(|s| s.epoch))
    }

    async fn enqueue_offline(
        &self,
        batch: Vec<(ClientId, Delivery)>,
    ) -> Result<QueueOutcome, StoreError> {
        let mut outcome = QueueOutcome::default();
        let mut sessions = self.sessions();
        for (client_id, delivery) in batch {
            let Some(stored) = sessions.get_mut(&client_id) else {
                outcome.no_session += 1;
                continue;
            };
            if delivery.qos == Qos::AtMostOnce {
                outcome.dropped_qos0 += 1;
                continue;
            }
            match stored.offline.push(delivery, self.queue_bound) {
                Ok(()) => outcome.queued += 1,
                Err(QueueFull::Messages) => outcome.dropped_queue_full += 1,
                Err(QueueFull::Bytes) => outcome.dropped_queue_bytes += 1,
            }
        }
        Ok(outcome)
    }

    async fn queue_for_session(
        &self,
        _client_id: &ClientId,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<Delivery>, StoreError> {
        // A connected session's memory is this store's only copy anyway.
        Ok(deliveries)
    }

    async fn set_retained(&self, message: Arc<Message>) -> Result<RetainOutcome, StoreError> {
        Ok(self.retained().set(message))
    }

    async fn retained_matching(&self, filters: &[&str]) -> Result<Vec<Arc<Message>>, StoreError> {
        Ok(self.retained().matching(filters))
    }

    async fn retained_count(&self) -> Result<usize, StoreError> {
        Ok(self.retained().len())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn delivery(qos: Qos, payload: &'static str) -> Delivery {
        let msg = Message::new("t", Bytes::from_static(payload.as_bytes()), qos, false);
        Delivery::forward(Arc::new(msg), qos)
    }

    fn request(id: &ClientId, clean_session: bool) -> ClaimRequest {
        ClaimRequest {
            client_id: id.clone(),
            clean_start: clean_session,
            persistent: !clean_session,
            expiry: None,
            will: None,
        }
    }

    /// Claims `id`'s persistent session and returns its owner.
    async fn owner_of(store: &MemoryStore, id: &ClientId) -> SessionOwner {
        store
            .claim_session(&request(id, false))
            .await
            .unwrap()
            .owner
    }

    fn payloads(state: &SessionState) -> Vec<&[u8]> {
        state
            .pending
            .iter()
            .map(|d| &d.message.payload[..])
            .collect()
    }

    #[tokio::test]
    async fn persistent_session_resumes_with_parked_then_offline_messages() {
        let store = MemoryStore::new(QueueBound::messages(10));
        let id: ClientId = "c".into();
        let claim = store.claim_session(&request(&id, false)).await.unwrap();
        assert!(claim.previous.is_none());
        // Queued while the connection was still parking: newer than parked.
        store
            .enqueue_offline(vec![(id.clone(), delivery(Qos::AtLeastOnce, "2"))])
            .await
            .unwrap();
        let mut parked = SessionState::default();
        parked.pending.push_back(delivery(Qos::AtLeastOnce, "1"));
        store.park_session(&claim.owner, parked).await.unwrap();
        store
            .enqueue_offline(vec![(id.clone(), delivery(Qos::AtLeastOnce, "3"))])
            .await
            .unwrap();

        let resumed = store
            .claim_session(&request(&id, false))
            .await
            .unwrap()
            .previous
            .unwrap();
        assert_eq!(payloads(&resumed), vec![b"1", b"2", b"3"]);
    }

    #[tokio::test]
    async fn stale_owner_cannot_park_over_a_newer_claim() {
        let store = MemoryStore::new(QueueBound::messages(10));
        let id: ClientId = "c".into();
        let old = owner_of(&store, &id).await;
        let new = owner_of(&store, &id).await;
        let mut stale = SessionState::default();
        stale
            .subscriptions
            .insert("stale".into(), Subscription::at(Qos::AtMostOnce));
        store.park_session(&old, stale).await.unwrap();
        store
            .park_session(&new, SessionState::default())
            .await
            .unwrap();
        let resumed = store
            .claim_session(&request(&id, false))
            .await
            .unwrap()
            .previous
            .unwrap();
        assert!(resumed.subscriptions.is_empty());
    }

    #[tokio::test]
    async fn offline_queue_is_bounded_and_skips_qos0() {
        let store = MemoryStore::new(QueueBound::messages(2));
        let id: ClientId = "c".into();
        store.claim_session(&request(&id, false)).await.unwrap();
        let batch = (0..4)
            .map(|_| (id.clone(), delivery(Qos::AtLeastOnce, "x")))
            .chain([(id.clone(), delivery(Qos::AtMostOnce, "y"))]);
        let outcome = store.enqueue_offline(batch.collect()).await.unwrap();
        assert_eq!(
            outcome,
            QueueOutcome {
                queued: 2,
                dropped_queue_full: 2,
                dropped_queue_bytes: 0,
                dropped_qos0: 1,
                no_session: 0
            }
        );
    }

    #[tokio::test]
    async fn offline_queue_is_bounded_by_bytes_and_parked_deliveries_count() {
        // Each delivery is 1 (topic) + 4 bytes.
        let bound = QueueBound {
            messages: 100,
            bytes: 12,
        };
        let store = MemoryStore::new(bound);
        let id: ClientId = "c".into();
        let owner = owner_of(&store, &id).await;
        let mut parked = SessionState::default();
        for payload in ["p1..", "p2..", "p3.."] {
            parked
                .pending
                .push_back(delivery(Qos::AtLeastOnce, payload));
        }
        // Parked whole although 15 bytes are over the bound...
        store.park_session(&owner, parked).await.unwrap();
        let outcome = store
            .enqueue_offline(vec![(id.clone(), delivery(Qos::AtLeastOnce, "late"))])
            .await
            .unwrap();
        // ...and they count: nothing more fits.
        assert_eq!((outcome.queued, outcome.dropped_queue_bytes), (0, 1));
        let resumed = store.claim_session(&request(&id, false)).await.unwrap();
        assert_eq!(payloads(&resumed.previous.unwrap()).len(), 3);
        // Taken: the bytes are free again, up to the bound.
        let batch = ["a...", "b...", "c..."]
            .map(|p| (id.clone(), delivery(Qos::AtLeastOnce, p)))
            .to_vec();
        let outcome = store.enqueue_offline(batch).await.unwrap();
        assert_eq!((outcome.queued, outcome.dropped_queue_bytes), (2, 1));
    }

    #[tokio::test]
    async fn clean_session_discards_and_is_not_kept() {
        let store = MemoryStore::new(QueueBound::messages(2));
        let id: ClientId = "c".into();
        let owner = store
            .claim_session(&request(&id, false))
            .await
            .unwrap()
            .owner;
        store
            .park_session(&owner, SessionState::default())
            .await
            .unwrap();
        assert!(store
            .claim_session(&request(&id, true))
            .await
            .unwrap()
            .previous
            .is_some());
        assert!(store
            .claim_session(&request(&id, true))
            .await
            .unwrap()
            .previous
            .is_none());
        let outcome = store
            .enqueue_offline(vec![(id.clone(), delivery(Qos::AtLeastOnce, "x"))])
            .await
            .unwrap();
        assert_eq!(outcome.no_session, 1);
    }

    #[tokio::test]
    async fn retained_set_replace_clear_and_match() {
        let store = MemoryStore::new(QueueBound::messages(2));
        let msg = |topic: &str, payload: &'static str| {
            Arc::new(Message::new(
                topic,
                Bytes::from_static(payload.as_bytes()),
                Qos::AtMostOnce,
                true,
            ))
        };
        store.set_retained(msg("a/b", "1")).await.unwrap();
        store.set_retained(msg("a/b", "2")).await.unwrap();
        store.set_retained(msg("a/c", "3")).await.unwrap();
        let got = store.retained_matching(&["a/b"]).await.unwrap();
        assert_eq!(&got[0].payload[..], b"2");
        assert_eq!(
            store
                .retained_matching(&["a/#", "a/c"])
                .await
                .unwrap()
                .len(),
            2
        );
        store.set_retained(msg("a/b", "")).await.unwrap();
        assert_eq!(store.retained_count().await.unwrap(), 1);
    }
}
