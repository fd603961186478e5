//! `$SYS/broker/...`: broker statistics published as retained messages, as
//! Mosquitto does, so monitoring tools that read them work unchanged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::broker::Broker;
use crate::message::{Message, Qos};

/// Publishes the statistics every `interval` until the task is dropped.
pub async fn publish_periodically(broker: Arc<Broker>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        for (topic, value) in snapshot(&broker).await {
            let message = Message::new(topic, Bytes::from(value), Qos::AtMostOnce, true);
            // Statistics are best effort: a failed store write is not retried.
            let _ = broker.publish_and_wait(Arc::new(message)).await;
        }
    }
}

async fn snapshot(broker: &Broker) -> Vec<(String, String)> {
    let s = broker.stats();
    let retained = broker.store().retained_count().await.unwrap_or(0);
    let counters = [
        ("clients/connected", s.clients_connected.get() as u64),
        ("clients/total", s.connections_total.get()),
        ("messages/received", s.received_total()),
        ("messages/sent", s.sent_total()),
        ("messages/dropped", s.dropped_total()),
        ("bytes/received", s.payload_bytes_received.get()),
        ("bytes/sent", s.payload_bytes_sent.get()),
        ("subscriptions/count", broker.subscription_count() as u64),
        ("retained messages/count", retained as u64),
        ("uptime", broker.started().elapsed().as_secs()),
    ];
    let mut out: Vec<(String, String)> = counters
        .into_iter()
        .map(|(name, value)| (format!("$SYS/broker/{name}"), value.to_string()))
        .collect();
    out.push((
        "$SYS/broker/version".into(),
        format!("astramq {}", env!("CARGO_PKG_VERSION")),
    ));
    out
}
