//! The proxy's Prometheus metrics and its `/metrics` + `/readyz` source.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `astramq_proxy_connections` | gauge: clients proxied right now | `backend` |
//! | `astramq_proxy_connections_total` | counter: clients proxied | `backend` |
//! | `astramq_proxy_bytes_total` | counter: bytes relayed | `backend`, `direction` (`upstream` = client→node, `downstream` = node→client) |
//! | `astramq_proxy_rejects_total` | counter: connections closed without a node | `reason` |
//! | `astramq_proxy_client_sockets` | gauge: client sockets held now, at any stage (what `--max-connections` caps) | |
//! | `astramq_proxy_client_addresses` | gauge: client addresses (IPv6: /64s) with a socket open | |
//! | `astramq_proxy_dial_failures_total` | counter: node connects refused or timed out | `backend` |
//! | `astramq_proxy_dial_duration_seconds` | histogram: successful node connects | |
//! | `astramq_proxy_backends` | gauge: backends usable now | |
//! | `astramq_membership_members` | gauge: gossip members by role and state ([`astramq_shared::metrics`]) | `role`, `state` |
//! | `astramq_build_info` | gauge, always 1 ([`astramq_shared::metrics`]) | `version`, `component="proxy"` |
//!
//! `backend` is the broker's node id (for a static `--backends` entry, its
//! address), so label cardinality is bounded by the cluster size.

use std::sync::{Arc, Mutex, MutexGuard};

use astramq_shared::metrics::{register, register_build_info, render, MemberCount};
use astramq_shared::ops_http::OpsSource;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::admission::{Admission, Refusal};
use crate::backends::BackendSet;
use crate::connect::Reject;

/// Every reject reason of the CONNECT reader and `no_backend`, so each
/// series exists (at 0) from the start; the admission limits' reasons
/// ([`Refusal::reason`]) are registered beside them.
pub const REJECT_REASONS: [&str; 8] = [
    "timeout",
    "not_connect",
    "malformed",
    "too_large",
    "no_backend",
    "closed",
    "tls_handshake",
    "ws_handshake",
];

/// Dial latency buckets: loopback connects take tens of µs, a LAN a few
/// hundred, and the dial timeout caps the top.
const DIAL_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// All proxy metrics, registered in one registry.
pub struct ProxyMetrics {
    /// Where everything below is registered; gathered for `/metrics`.
    registry: Registry,
    /// Active proxied connections per backend; also the load that
    /// `least-connections` reads.
    pub connections: IntGaugeVec,
    /// Proxied connections per backend since start.
    pub connections_total: IntCounterVec,
    /// Relayed bytes per backend and direction.
    pub bytes: IntCounterVec,
    /// Connections closed before a node was dialled (or with none reachable).
    pub rejects: IntCounterVec,
    /// Failed dials per backend.
    pub dial_failures: IntCounterVec,
    /// Time to connect to a node.
    pub dial_duration: Histogram,
    /// Size of the usable backend set, refreshed at each scrape.
    pub backends: IntGauge,
    /// Client sockets held, refreshed at each scrape.
    pub client_sockets: IntGauge,
    /// Client addresses with a socket open, refreshed at each scrape.
    pub client_addresses: IntGauge,
    /// Members per role and gossip state, kept by the control plane.
    members: Mutex<MemberCount>,
}

/// The per-connection handles for one backend, resolved once when the
/// connection is routed so the relay only does atomic adds.
pub struct BackendMeters {
    /// Client→node bytes.
    pub upstream: IntCounter,
    /// Node→client bytes.
    pub downstream: IntCounter,
}

/// Keeps a backend's active-connection gauge raised while it lives.
pub struct ActiveGuard(IntGauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ProxyMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let connections = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "astramq_proxy_connections",
                    "Client connections proxied to each backend right now.",
                ),
                &["backend"],
            ),
        );
        let connections_total = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "astramq_proxy_connections_total",
                    "Client connections proxied to each backend.",
                ),
                &["backend"],
            ),
        );
        let bytes = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "astramq_proxy_bytes_total",
                    "Bytes relayed; upstream is client to node, downstream node to client.",
                ),
                &["backend", "direction"],
            ),
        );
        let rejects = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "astramq_proxy_rejects_total",
                    "Client connections closed without being proxied, by reason.",
                ),
                &["reason"],
            ),
        );
        for reason in REJECT_REASONS
            .into_iter()
            .chain(Refusal::ALL.map(Refusal::reason))
        {
            rejects.with_label_values(&[reason]);
        }
        let dial_failures = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "astramq_proxy_dial_failures_total",
                    "Connects to a backend that were refused, failed or timed out.",
                ),
                &["backend"],
            ),
        );
        let dial_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "astramq_proxy_dial_duration_seconds",
                    "Time to open a TCP connection to a backend (successful dials).",
                )
                .buckets(DIAL_BUCKETS.to_vec()),
            ),
        );
        let backends = register(
            &registry,
            IntGauge::new(
                "astramq_proxy_backends",
                "Backends new clients can be sent to.",
            ),
        );
        let client_sockets = register(
            &registry,
            IntGauge::new(
                "astramq_proxy_client_sockets",
                "Client sockets held now, before and after CONNECT (what --max-connections caps).",
            ),
        );
        let client_addresses = register(
            &registry,
            IntGauge::new(
                "astramq_proxy_client_addresses",
                "Client addresses (IPv6: /64 prefixes) with a socket open now.",
            ),
        );
        let members = Mutex::new(MemberCount::register(&registry));
        register_build_info(&registry, "proxy", env!("CARGO_PKG_VERSION"));
        ProxyMetrics {
            registry,
            connections,
            connections_total,
            bytes,
            rejects,
            dial_failures,
            dial_duration,
            backends,
            client_sockets,
            client_addresses,
            members,
        }
    }

    /// Counts a connection closed without a node.
    pub fn reject(&self, why: &Reject) {
        self.rejects.with_label_values(&[why.reason()]).inc();
    }

    /// Counts a socket closed on accept by an admission limit.
    pub fn refused(&self, why: Refusal) {
        self.rejects.with_label_values(&[why.reason()]).inc();
    }

    /// Counts a connection for which no node could be reached.
    pub fn no_backend(&self) {
        self.rejects.with_label_values(&["no_backend"]).inc();
    }

    /// Counts a client closed because its TLS handshake failed or timed out.
    pub fn tls_handshake_failed(&self) {
        self.rejects.with_label_values(&["tls_handshake"]).inc();
    }

    /// Counts a client closed because its WebSocket upgrade failed (wrong
    /// path, no `mqtt` subprotocol, not HTTP) or timed out.
    pub fn ws_handshake_failed(&self) {
        self.rejects.with_label_values(&["ws_handshake"]).inc();
    }

    /// Active connections to `backend` (the least-connections load).
    pub fn active(&self, backend: &str) -> i64 {
        self.connections.with_label_values(&[backend]).get()
    }

    /// Records a connection routed to `backend`: raises its gauges and
    /// returns the handles the relay needs plus the guard that lowers the
    /// active gauge when dropped.
    pub fn routed(&self, backend: &str) -> (BackendMeters, ActiveGuard) {
        self.connections_total.with_label_values(&[backend]).inc();
        let active = self.connections.with_label_values(&[backend]);
        active.inc();
        let meters = BackendMeters {
            upstream: self.bytes.with_label_values(&[backend, "upstream"]),
            downstream: self.bytes.with_label_values(&[backend, "downstream"]),
        };
        (meters, ActiveGuard(active))
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// `astramq_membership_members`, for the control plane to keep current.
    pub fn members(&self) -> MutexGuard<'_, MemberCount> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What `/metrics` and `/readyz` report for the proxy.
pub struct ProxyOps {
    /// The metrics to render.
    pub metrics: Arc<ProxyMetrics>,
    /// The backend set; ready means at least one backend.
    pub backends: Arc<BackendSet>,
    /// The admission counters behind the client-socket gauges.
    pub admission: Arc<Admission>,
}

impl OpsSource for ProxyOps {
    fn metrics_text(&self) -> String {
        self.metrics
            .backends
            .set(self.backends.snapshot().len() as i64);
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .client_sockets
            .set(gauge(self.admission.open()));
        self.metrics
            .client_addresses
            .set(gauge(self.admission.addresses()));
        self.metrics.render()
    }

    fn readiness(&self) -> Result<(), String> {
        if self.backends.snapshot().is_empty() {
            Err("no backend: no live broker known and no static --backends".into())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::AdmissionLimits;

    #[test]
    fn every_documented_series_is_exported() {
        let metrics = Arc::new(ProxyMetrics::new());
        let (meters, guard) = metrics.routed("n1");
        meters.upstream.inc_by(10);
        metrics.reject(&Reject::Timeout);
        metrics.refused(Refusal::ConnectionsPerIp);
        let admission = Arc::new(Admission::new(AdmissionLimits {
            max_connections: 10,
            max_connections_per_ip: 10,
            max_connection_rate: 10,
        }));
        let _permit = admission.admit(Some([10, 0, 0, 1].into())).unwrap();
        metrics.dial_duration.observe(0.001);
        metrics.dial_failures.with_label_values(&["n2"]).inc();
        let ops = ProxyOps {
            metrics: metrics.clone(),
            backends: Arc::new(BackendSet::with_fallback(&["127.0.0.1:1".parse().unwrap()])),
            admission: admission.clone(),
        };
        let text = ops.metrics_text();
        for line in [
            "astramq_proxy_connections{backend=\"n1\"} 1",
            "astramq_proxy_connections_total{backend=\"n1\"} 1",
            "astramq_proxy_bytes_total{backend=\"n1\",direction=\"upstream\"} 10",
            "astramq_proxy_rejects_total{reason=\"timeout\"} 1",
            "astramq_proxy_rejects_total{reason=\"no_backend\"} 0",
            "astramq_proxy_rejects_total{reason=\"connections_per_ip\"} 1",
            "astramq_proxy_rejects_total{reason=\"connection_rate\"} 0",
            "astramq_proxy_client_sockets 1",
            "astramq_proxy_client_addresses 1",
            "astramq_proxy_dial_failures_total{backend=\"n2\"} 1",
            "astramq_proxy_dial_duration_seconds_count 1",
            "astramq_proxy_backends 1",
            "astramq_membership_members{role=\"broker\",state=\"alive\"} 0",
            "astramq_build_info{component=\"proxy\",version=",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        drop(guard);
        assert_eq!(metrics.active("n1"), 0);
        assert!(ops.readiness().is_ok());
    }

    #[test]
    fn not_ready_without_backends() {
        let ops = ProxyOps {
            metrics: Arc::new(ProxyMetrics::new()),
            backends: Arc::new(BackendSet::default()),
            admission: Arc::new(Admission::new(AdmissionLimits {
                max_connections: 1,
                max_connections_per_ip: 1,
                max_connection_rate: 1,
            })),
        };
        assert!(ops.readiness().is_err());
    }
}
