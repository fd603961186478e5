//! The node's operations endpoint: what `/metrics` and `/readyz` report.

use std::sync::Arc;
use std::time::Duration;

use astramq_shared::ops_http::OpsSource;

use crate::broker::Broker;

/// How often gauges that need a store round trip are refreshed.
const SLOW_GAUGE_PERIOD: Duration = Duration::from_secs(5);

/// The broker seen from the operations endpoint.
pub struct NodeOps {
    broker: Arc<Broker>,
}

impl NodeOps {
    /// Reports on `broker`.
    pub fn new(broker: Arc<Broker>) -> NodeOps {
        NodeOps { broker }
    }
}

impl OpsSource for NodeOps {
    fn metrics_text(&self) -> String {
        self.broker.refresh_gauges();
        astramq_shared::metrics::render(&self.broker.stats().registry)
    }

    fn readiness(&self) -> Result<(), String> {
        match &self.broker.cluster() {
            Some(cluster) if cluster.metrics.redis_up.get() == 0 => Err("Redis unreachable".into()),
            _ => Ok(()),
        }
    }
}

/// Keeps the gauges that need a store round trip fresh (retained count).
pub async fn refresh_slow_gauges(broker: Arc<Broker>) {
    let mut ticker = tokio::time::interval(SLOW_GAUGE_PERIOD);
    loop {
        ticker.tick().await;
        if let Ok(count) = broker.store().retained_count().await {
            broker.stats().retained_messages.set(count as i64);
        }
    }
}
