//! Which entries of this node's journal and inbox still hold deliveries
//! served from memory, and how far each stream may be trimmed.
//!
//! The forwarder records every journal entry it pins, the inbox reader
//! every inbox entry it pins and how far it has handled the inbox; the
//! [`maintain`] task trims both streams to the oldest entry still pinned
//! (or to what was handled, when nothing is) and asks the sessions that
//! hold an old entry to copy their pinned deliveries into their queues, so
//! a slow client cannot hold a stream's tail for long.
//!
//! Guaranteed: no entry is trimmed while a pin on it lives, nor at all
//! while this node rejoins after being fenced (its sessions' pins are
//! dropped then, and a survivor may still be reading the streams); entries
//! a previous run left are never trimmed here (the rejoin's recovery reads
//! and trims them). Not guaranteed: that trimming keeps up under load — a
//! stream may hold up to a trim period (and a spill period for slow
//! sessions) of acknowledged entries, which a survivor queues again (QoS 1
//! duplicates after a death).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::Cluster;
use crate::pin::{Pin, PinnedEntry, PinnedStream, SpillRequest, StreamId};
use crate::redis_model::keys;

/// How often the streams are trimmed.
const TRIM_EVERY: Duration = Duration::from_millis(100);
/// A session still holding a delivery pinned this long is asked to copy
/// its pinned deliveries into its queue.
pub const SPILL_AFTER: Duration = Duration::from_secs(3);
/// How often old pins are looked for.
const SPILL_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Most pinned entries whose holders are asked to spill in one check.
const SPILL_REQUESTS_PER_CHECK: usize = 10_000;

/// The pins of one stream, oldest first (entries are pinned in id order:
/// one task appends to, or reads, each stream).
#[derive(Default)]
struct Book {
    pins: VecDeque<Weak<PinnedEntry>>,
    /// The newest entry id this run appended (journal) or handled (inbox).
    newest: Option<StreamId>,
}

impl Book {
    /// Forgets the pins no delivery holds any more, from the oldest on.
    fn prune(&mut self) {
        while self.pins.front().is_some_and(|w| w.strong_count() == 0) {
            self.pins.pop_front();
        }
    }

    /// Where the stream may be trimmed to (`XTRIM MINID`): the oldest
    /// pinned entry, or past the newest one known when none is pinned.
    fn trim_point(&mut self) -> Option<StreamId> {
        self.prune();
        match self.pins.front().and_then(Weak::upgrade) {
            Some(oldest) => Some(oldest.id),
            None => self.newest.map(StreamId::next),
        }
    }
}

/// The pins of this node's journal and inbox.
#[derive(Default)]
pub struct Ledger {
    journal: Mutex<Book>,
    inbox: Mutex<Book>,
}

impl Ledger {
    fn book(&self, stream: PinnedStream) -> MutexGuard<'_, Book> {
        let book = match stream {
            PinnedStream::Journal => &self.journal,
            PinnedStream::Inbox => &self.inbox,
        };
        book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins entry `id` of `stream` for deliveries to `holders`; `None` when
    /// the id cannot be read (the caller queues the deliveries instead).
    pub fn pin(
        &self,
        stream: PinnedStream,
        id: &str,
        holders: Vec<Weak<dyn SpillRequest>>,
    ) -> Option<Pin> {
        let id = StreamId::parse(id)?;
        let (pin, weak) = Pin::new(PinnedEntry {
            stream,
            id,
            since: Instant::now(),
            holders,
        });
        self.book(stream).pins.push_back(weak);
        Some(pin)
    }

    /// Records that this run is done with every entry up to `id`: each
    /// delivery from it is queued in its session's queue or pinned.
    pub fn passed(&self, stream: PinnedStream, id: &str) {
        if let Some(id) = StreamId::parse(id) {
            let mut book = self.book(stream);
            book.newest = book.newest.max(Some(id));
        }
    }

    /// Where `stream` may be trimmed to now.
    pub fn trim_point(&self, stream: PinnedStream) -> Option<StreamId> {
        self.book(stream).trim_point()
    }

    /// Asks the sessions holding deliveries from entries pinned before
    /// `before` to spill them; returns how many entries were that old.
    pub fn request_spills(&self, before: Instant) -> usize {
        let mut old = Vec::new();
        for stream in [PinnedStream::Journal, PinnedStream::Inbox] {
            let mut book = self.book(stream);
            book.prune();
            for weak in book.pins.iter().take(SPILL_REQUESTS_PER_CHECK) {
                let Some(entry) = weak.upgrade() else {
                    continue;
                };
                if entry.since >= before {
                    break;
                }
                old.push(entry);
            }
        }
        // Outside the locks: a spill request takes a mailbox's lock.
        for entry in &old {
            for holder in entry.holders.iter().filter_map(Weak::upgrade) {
                holder.request_spill();
            }
        }
        old.len()
    }
}

/// Trims this node's journal and inbox as their pins allow, and asks slow
/// sessions to spill; runs for the life of the node.
pub async fn maintain(cluster: Arc<Cluster>) {
    let mut con = cluster.connection();
    let mut trimmed: [Option<StreamId>; 2] = [None, None];
    let mut last_spill_check = Instant::now();
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        for (i, stream) in [PinnedStream::Journal, PinnedStream::Inbox]
            .into_iter()
            .enumerate()
        {
            let Some(point) = cluster.ledger.trim_point(stream) else {
                continue;
            };
            // Checked after the point is taken: a rejoin drops its
            // sessions' pins only once it has begun, so a point taken
            // before that saw them alive.
            if trimmed[i] == Some(point) || !cluster.accepts_clients() {
                continue;
            }
            if trim(&mut con, &cluster, stream, point).await {
                trimmed[i] = Some(point);
            }
        }
        if last_spill_check.elapsed() >= SPILL_CHECK_EVERY {
            last_spill_check = Instant::now();
            if let Some(before) = Instant::now().checked_sub(SPILL_AFTER) {
                let old = cluster.ledger.request_spills(before);
                if old > 0 {
                    tracing::debug!(
                        entries = old,
                        "asked slow sessions to spill pinned deliveries"
                    );
                }
            }
        }
    }
}

async fn trim(
    con: &mut ConnectionManager,
    cluster: &Cluster,
    stream: PinnedStream,
    point: StreamId,
) -> bool {
    let key = match stream {
        PinnedStream::Journal => keys::journal(&cluster.node_id),
        PinnedStream::Inbox => keys::inbox(&cluster.node_id),
    };
    let trimmed: redis::RedisResult<redis::Value> = redis::cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg(point.to_string())
        .query_async(con)
        .await;
    match trimmed {
        Ok(_) => true,
        Err(error) => {
            tracing::debug!(%error, ?stream, "trim failed; trimmed next time");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Holder(std::sync::atomic::AtomicUsize);

    impl SpillRequest for Holder {
        fn request_spill(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn holders(holder: &Arc<Holder>) -> Vec<Weak<dyn SpillRequest>> {
        let holder: Arc<dyn SpillRequest> = holder.clone();
        vec![Arc::downgrade(&holder)]
    }

    #[test]
    fn a_stream_is_trimmed_only_up_to_its_oldest_live_pin() {
        let ledger = Ledger::default();
        let journal = PinnedStream::Journal;
        assert_eq!(ledger.trim_point(journal), None, "nothing of this run yet");
        let first = ledger.pin(journal, "10-0", Vec::new()).unwrap();
        let second = ledger.pin(journal, "11-0", Vec::new()).unwrap();
        ledger.passed(journal, "11-0");
        let copy = second.clone();
        assert_eq!(ledger.trim_point(journal).unwrap().to_string(), "10-0");
        drop(first);
        assert_eq!(ledger.trim_point(journal).unwrap().to_string(), "11-0");
        drop(second);
        assert_eq!(
            ledger.trim_point(journal).unwrap().to_string(),
            "11-0",
            "a clone still holds it"
        );
        drop(copy);
        assert_eq!(ledger.trim_point(journal).unwrap().to_string(), "11-1");
        ledger.passed(journal, "12-3");
        assert_eq!(ledger.trim_point(journal).unwrap().to_string(), "12-4");
        assert_eq!(
            ledger.trim_point(PinnedStream::Inbox),
            None,
            "streams are kept apart"
        );
    }

    #[test]
    fn holders_of_old_pins_are_asked_to_spill_and_young_ones_are_not() {
        let ledger = Ledger::default();
        let old_holder = Arc::new(Holder::default());
        let young_holder = Arc::new(Holder::default());
        let _old = ledger.pin(PinnedStream::Inbox, "1-0", holders(&old_holder));
        let cut = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let _young = ledger.pin(PinnedStream::Inbox, "2-0", holders(&young_holder));
        assert_eq!(ledger.request_spills(cut), 1);
        let count = |h: &Holder| h.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(count(&old_holder), 1);
        assert_eq!(count(&young_holder), 0);
    }

    #[test]
    fn an_unreadable_id_pins_nothing() {
        let ledger = Ledger::default();
        assert!(ledger
            .pin(PinnedStream::Journal, "nope", Vec::new())
            .is_none());
        assert_eq!(ledger.trim_point(PinnedStream::Journal), None);
    }
}
