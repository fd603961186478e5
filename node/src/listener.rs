//! The accept loop and graceful shutdown.
//!
//! Every connection gets its own task. Four things bound and track them:
//! [`Admission`] closes connections over the per-IP and per-second limits
//! before anything is read, a semaphore caps concurrent connections, a
//! `watch` channel tells every
//! session to stop, and an `mpsc` sender cloned into each task tells the
//! listener, by being dropped, when the last session has finished.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::broker::Broker;
use crate::limits::{Admission, NotAdmitted};
use crate::session;
use crate::stats::{LimitReason, Refusal};

/// Accepts connections until `shutdown` resolves, then ends every session
/// and waits (at most `drain_timeout`) for them to save their state.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let limit = Arc::new(Semaphore::new(broker.limits().max_connections));
    let admission = Admission::new(
        broker.limits().max_connections_per_ip,
        broker.limits().max_connection_rate,
        broker.limits().trusted_proxies.clone(),
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors or similar: back off, keep serving.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let ip_slot = match admission.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        refuse(&broker, why);
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "connection refused: max-connections reached");
                    broker.stats().refused(Refusal::MaxConnections);
                    continue;
                };
                broker.stats().connections_total.inc();
                let _ = stream.set_nodelay(true);
                let task = session::serve(broker.clone(), stream, peer, stop_rx.clone(), done_tx.clone());
                tokio::spawn(async move {
                    task.await;
                    drop(permit);
                    drop(ip_slot);
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: closing client connections");
    let _ = stop_tx.send(true);
    drop(done_tx);
    if tokio::time::timeout(drain_timeout, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not finish within the shutdown timeout");
    }
}

/// Counts a connection closed at accept by an admission limit (dropping
/// the stream closes it; nothing was read).
fn refuse(broker: &Broker, why: NotAdmitted) {
    let (refusal, limit) = match why {
        NotAdmitted::PerIp => (Refusal::PerIp, LimitReason::ConnectionsPerIp),
        NotAdmitted::Rate => (Refusal::Rate, LimitReason::ConnectionRate),
    };
    tracing::debug!(?why, "connection closed at accept: admission limit");
    broker.stats().refused(refusal);
    broker.stats().limit_refused(limit);
}
