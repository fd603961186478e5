//! Metrics of the cluster layer: Redis health and latency, stream traffic.

use std::future::Future;
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::limits::queue::QueueFull;
use crate::stats::QueueRefusalCounters;

/// The Redis operations timed, a fixed set so the label stays bounded.
#[derive(Debug, Clone, Copy)]
pub enum RedisOp {
    /// Forwarding a batch of publishes to streams.
    Forward,
    /// Claiming a session.
    Claim,
    /// Parking a session.
    Park,
    /// Any other session write (discard, subscriptions, drain).
    Session,
    /// Queuing offline deliveries.
    Enqueue,
    /// Retained message reads and writes.
    Retained,
    /// Heartbeats and dead-node checks.
    Liveness,
}

impl RedisOp {
    const ALL: [(RedisOp, &'static str); 7] = [
        (RedisOp::Forward, "forward"),
        (RedisOp::Claim, "claim"),
        (RedisOp::Park, "park"),
        (RedisOp::Session, "session"),
        (RedisOp::Enqueue, "enqueue"),
        (RedisOp::Retained, "retained"),
        (RedisOp::Liveness, "liveness"),
    ];
}

/// Cluster-layer metrics, registered in the node's registry.
pub struct ClusterMetrics {
    latency: [Histogram; 7],
    errors: [IntCounter; 7],
    /// Publishes appended to inter-node streams.
    pub appended: IntCounter,
    /// Messages read from inter-node streams.
    pub read: IntCounter,
    /// 1 while Redis answers, 0 while it does not.
    pub redis_up: IntGauge,
    /// Entries waiting in this node's inbox (routed mode).
    pub stream_lag: IntGauge,
    /// Publishes not acknowledged because a destination inbox was full.
    pub inbox_full: IntCounter,
    /// Deliveries dropped because a persistent session's queue was full.
    queue_full: IntCounter,
    /// The node's own drop and limit counters, counted with `queue_full`.
    node_refusals: QueueRefusalCounters,
    /// QoS 1/2 publishes not acknowledged because only fenced nodes
    /// announced subscribers for them.
    pub fenced_refusals: IntCounter,
    /// QoS 1/2 publishes not acknowledged because this node's route table
    /// was stale (not yet reloaded after a failed route-log read or a fence).
    pub stale_route_refusals: IntCounter,
    /// Deliveries sent again after a session resumed or was adopted (QoS 1
    /// messages may reach the client twice across a node's death).
    pub redeliveries: IntCounter,
    /// Dead nodes this node recovered.
    pub recoveries: IntCounter,
    /// Times this node found itself declared dead and started afresh.
    pub fenced: IntCounter,
    /// QoS 1 deliveries to persistent sessions served from memory, held
    /// in Redis by the journal or inbox entry they came in.
    pub pinned: IntCounter,
    /// Pinned deliveries copied into their session's queue (the session
    /// ended, or was slow and held an old entry).
    pub spilled: IntCounter,
}

impl ClusterMetrics {
    /// Registers the cluster metrics in `registry`; refused queue writes
    /// are also counted in `node_refusals`.
    pub fn new(registry: &Registry, node_refusals: QueueRefusalCounters) -> ClusterMetrics {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "astramq_redis_command_duration_seconds",
                "Time for Redis round trips (one pipeline or script), by operation.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
            ]),
            &["op"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "astramq_redis_errors_total",
                "Failed Redis round trips, by operation.",
            ),
            &["op"],
        )
        .expect("valid metric");
        let appended = IntCounter::new(
            "astramq_stream_appends_total",
            "Publishes appended to inter-node streams.",
        )
        .expect("valid metric");
        let read = IntCounter::new(
            "astramq_stream_reads_total",
            "Messages read from inter-node streams.",
        )
        .expect("valid metric");
        let redis_up = IntGauge::new(
            "astramq_redis_up",
            "1 while Redis answers this node, else 0.",
        )
        .expect("valid metric");
        let stream_lag = IntGauge::new(
            "astramq_stream_lag",
            "Entries waiting in this node's inbox stream.",
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let inbox_full = counter(
            "astramq_inbox_full_total",
            "Publishes not acknowledged because a destination node's inbox held its bound.",
        );
        let queue_full = counter(
            "astramq_session_queue_full_total",
            "QoS 1/2 deliveries dropped because a persistent session's Redis queue was full.",
        );
        let fenced_refusals = counter(
            "astramq_fenced_destination_refusals_total",
            "QoS 1/2 publishes not acknowledged because only fenced (declared dead) nodes announced subscribers for them.",
        );
        let stale_route_refusals = counter(
            "astramq_stale_route_refusals_total",
            "QoS 1/2 publishes not acknowledged because this node's route table was being reloaded.",
        );
        let redeliveries = counter(
            "astramq_redeliveries_total",
            "Deliveries re-sent from a session's Redis queue on resume or adoption (possible QoS 1 duplicates).",
        );
        let recoveries = counter(
            "astramq_node_recoveries_total",
            "Dead nodes whose sessions this node took over.",
        );
        let fenced = counter(
            "astramq_node_fenced_total",
            "Times this node found it had been declared dead, dropped its clients and rejoined.",
        );
        let pinned = counter(
            "astramq_pinned_deliveries_total",
            "QoS 1 deliveries to connected persistent sessions served from memory, held in Redis by their journal or inbox entry.",
        );
        let spilled = counter(
            "astramq_spilled_deliveries_total",
            "Pinned deliveries copied into their session's Redis queue (session ended, or slow).",
        );
        for metric in [
            Box::new(inbox_full.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(pinned.clone()),
            Box::new(spilled.clone()),
            Box::new(queue_full.clone()),
            Box::new(fenced_refusals.clone()),
            Box::new(stale_route_refusals.clone()),
            Box::new(redeliveries.clone()),
            Box::new(recoveries.clone()),
            Box::new(fenced.clone()),
            Box::new(latency.clone()),
            Box::new(errors.clone()),
            Box::new(appended.clone()),
            Box::new(read.clone()),
            Box::new(redis_up.clone()),
            Box::new(stream_lag.clone()),
        ] {
            registry.register(metric).expect("metric registered once");
        }
        redis_up.set(1);
        ClusterMetrics {
            latency: RedisOp::ALL.map(|(_, l)| latency.with_label_values(&[l])),
            errors: RedisOp::ALL.map(|(_, l)| errors.with_label_values(&[l])),
            appended,
            read,
            redis_up,
            stream_lag,
            inbox_full,
            queue_full,
            node_refusals,
            fenced_refusals,
            stale_route_refusals,
            redeliveries,
            recoveries,
            fenced,
            pinned,
            spilled,
        }
    }

    /// Counts a delivery a persistent session's Redis queue refused (full
    /// by `why`): here, and in the node's drop and limit counters.
    pub fn queue_refused(&self, why: QueueFull) {
        self.queue_full.inc();
        self.node_refusals.dropped_queue_full.inc();
        if why == QueueFull::Bytes {
            self.node_refusals.queued_bytes.inc();
        }
    }

    /// Runs one Redis round trip, recording its duration and any error.
    pub async fn timed<T, E>(
        &self,
        op: RedisOp,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        self.latency[op as usize].observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors[op as usize].inc();
        }
        result
    }
}
