//! The recovery lock: one per node being recovered, so exactly one survivor
//! (or the node itself, rejoining) runs its recovery at a time.
//!
//! It carries a token unique to its taker, lives [`LOCK_TTL`] without
//! renewal (should its holder die), is renewed every [`LOCK_RENEW_EVERY`]
//! by a task of its own, and is released only by its holder. Once a
//! renewal finds the lock gone or taken by another, [`Lock::check`] fails
//! and the recovery stops at its next step. Not guaranteed: that a step
//! already under way when the lock is lost is not finished (a step never
//! undoes what a later holder would do anyway).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::store::{RecoveryStore, StoreResult};
use super::RecoveryError;

/// How long the lock lives without renewal, should its holder die.
pub(super) const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often the holder renews it.
pub(super) const LOCK_RENEW_EVERY: Duration = Duration::from_secs(5);

/// A held recovery lock: renewed in the background until released.
pub(super) struct Lock {
    /// The node whose recovery it guards.
    node: String,
    /// Proves the lock is ours when renewing and releasing it.
    token: String,
    /// Set by the renewer once the lock is not ours anymore.
    lost: Arc<AtomicBool>,
    /// The renewing task; aborted on release.
    renewer: tokio::task::JoinHandle<()>,
}

impl Lock {
    /// Takes `node`'s recovery lock for `me` if it is free.
    pub(super) async fn try_acquire(
        store: &Arc<dyn RecoveryStore>,
        me: &str,
        node: &str,
    ) -> StoreResult<Option<Lock>> {
        let token = format!("{me}:{}", crate::message::unix_millis());
        if !store.try_lock(node, &token, LOCK_TTL).await? {
            return Ok(None);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            store.clone(),
            node.to_string(),
            token.clone(),
            lost.clone(),
        ));
        Ok(Some(Lock {
            node: node.to_string(),
            token,
            lost,
            renewer,
        }))
    }

    /// Fails once the lock is no longer held.
    pub(super) fn check(&self) -> Result<(), RecoveryError> {
        match self.lost.load(Ordering::Acquire) {
            true => Err(RecoveryError::LockLost),
            false => Ok(()),
        }
    }

    /// Stops renewing and deletes the lock if it is still ours.
    pub(super) async fn release(self, store: &dyn RecoveryStore) {
        self.renewer.abort();
        if let Err(error) = store.release_lock(&self.node, &self.token).await {
            tracing::warn!(%error, "recovery lock not released; it expires by itself");
        }
    }
}

/// Renews a lock until aborted; sets `lost` when it is not ours anymore.
async fn renew(store: Arc<dyn RecoveryStore>, node: String, token: String, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(LOCK_RENEW_EVERY).await;
        match store.renew_lock(&node, &token, LOCK_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                lost.store(true, Ordering::Release);
                return;
            }
            Err(error) => tracing::warn!(%error, "recovery lock renewal failed; retrying"),
        }
    }
}
