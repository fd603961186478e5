//! The control plane: everything but client traffic, as one pingora service
//! on its own single-thread runtime.
//!
//! At start it serves the operations endpoint (and prints its address), then
//! joins gossip membership as a `proxy` member. Only then does it report
//! ready, which releases the MQTT listener (it depends on this service), so
//! the readiness line means "metrics up, membership joined". While running
//! it keeps the backend set equal to the live brokers and counts members by
//! role and state. On pingora's shutdown signal it leaves the cluster gracefully
//! (peers see `left`, not `failed`).
//!
//! A start-up failure (port in use, bad gossip key) or membership stopping
//! on its own (a node-id conflict) trips the [`Fatal`] switch: the process
//! then exits with an error instead of serving with a frozen backend set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use astramq_shared::membership::{Membership, MembershipConfig, Role};
use astramq_shared::ops_http::{self, OpsSource};
use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use crate::backends::{self, BackendSet};
use crate::metrics::ProxyMetrics;

/// A one-way switch: "the process cannot go on". Watched by the signal
/// handler in `main`, which then ends the server with an error status.
#[derive(Default)]
pub struct Fatal {
    tripped: AtomicBool,
    notify: Notify,
}

impl Fatal {
    /// Trips the switch (idempotent).
    pub fn trip(&self) {
        self.tripped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Whether the switch was tripped.
    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::SeqCst)
    }

    /// Resolves once the switch is tripped.
    pub async fn tripped(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_tripped() {
                return;
            }
            notified.await;
        }
    }
}

/// The control-plane service.
pub struct ControlPlane {
    /// Where to serve `/metrics`, `/healthz`, `/readyz`; off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Gossip settings; `None` runs on the static backend list only.
    pub membership: Option<MembershipConfig>,
    /// What the operations endpoint reports.
    pub ops: Arc<dyn OpsSource>,
    /// The backend set this service keeps current.
    pub backends: Arc<BackendSet>,
    /// Member-state gauges.
    pub metrics: Arc<ProxyMetrics>,
    /// Tripped when this service cannot do its job.
    pub fatal: Arc<Fatal>,
}

#[async_trait]
impl ServiceWithDependents for ControlPlane {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        let mut metrics_addr = None;
        if let Some(addr) = self.metrics_listen {
            match ops_http::serve(addr, self.ops.clone()).await {
                Ok(bound) => {
                    println!("astramq-proxy metrics on http://{bound}/metrics");
                    metrics_addr = Some(bound);
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start the metrics endpoint");
                    self.fatal.trip();
                    return;
                }
            }
        }
        let Some(mut config) = self.membership.clone() else {
            tracing::info!("no --gossip-listen: using the static --backends list only");
            ready.notify_ready();
            let _ = shutdown.wait_for(|stopping| *stopping).await;
            return;
        };
        // Advertise where Prometheus can scrape us (the bound port, which
        // differs from the configured one with port 0).
        config.metrics_addr = metrics_addr;
        let node_id = config.node_id.clone();
        let membership = match Membership::start(config).await {
            Ok(membership) => membership,
            Err(error) => {
                tracing::error!(%error, "cannot start gossip membership");
                self.fatal.trip();
                return;
            }
        };
        tracing::info!(%node_id, "joined gossip membership as a proxy");
        ready.notify_ready();

        let follow = backends::follow(membership.clone(), self.backends.clone());
        let count = count_members(&membership, &node_id, &self.metrics);
        let stopping = async {
            // The `Ref` it returns must not live across the leave below.
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        tokio::select! {
            () = stopping => {
                tracing::info!("shutting down: leaving the cluster");
                membership.leave().await;
            }
            () = async { tokio::join!(follow, count); } => {
                // Membership stopped without our leave (e.g. a node id
                // conflict): a proxy with a frozen backend set must not serve.
                tracing::error!("gossip membership stopped unexpectedly; exiting");
                self.fatal.trip();
            }
        }
    }

    fn name(&self) -> &str {
        "control"
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }
}

/// Keeps `astramq_membership_members` current from membership events
/// until the event stream closes.
async fn count_members(membership: &Membership, self_id: &str, metrics: &ProxyMetrics) {
    let mut events = membership.subscribe();
    metrics.members().seed(self_id, Role::Proxy, membership);
    loop {
        match events.recv().await {
            Ok(event) => metrics.members().apply(&event),
            Err(RecvError::Lagged(_)) => metrics.members().seed(self_id, Role::Proxy, membership),
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fatal_wakes_a_waiter_tripped_before_or_after() {
        let fatal = Arc::new(Fatal::default());
        let waiter = tokio::spawn({
            let fatal = fatal.clone();
            async move { fatal.tripped().await }
        });
        tokio::task::yield_now().await;
        fatal.trip();
        waiter.await.unwrap();
        fatal.tripped().await; // already tripped: returns at once
    }
}
