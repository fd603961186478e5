//! What the broker counts, as Prometheus metrics.
//!
//! Counters and gauges are `prometheus` types updated lock-free on the hot
//! path (labelled series are resolved once, here, never per message).
//! Values that are cheaper to read than to track — sessions, subscriptions,
//! queued messages — are set just before each scrape by
//! [`crate::broker::Broker::refresh_gauges`]. `$SYS` topics read the same
//! values. Names follow Prometheus conventions: `astramq_` prefix, `_total`
//! for counters, base units, and no client id or topic as a label.

use astramq_shared::metrics::{register, register_build_info};
use prometheus::{Counter, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::message::Qos;
use crate::router::topic::TopicLimit;

/// Why a connection was refused or closed by the node.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// `max-connections` reached.
    MaxConnections,
    /// The first packet was not a valid CONNECT, or no CONNECT in time.
    BadConnect,
    /// CONNACK 0x01.
    UnsupportedProtocol,
    /// CONNACK 0x02.
    IdentifierRejected,
    /// CONNACK 0x03 (store unavailable, takeover stuck, `max-sessions`).
    ServerUnavailable,
    /// `max-connections-per-ip` reached.
    PerIp,
    /// CONNACK 0x04: unknown user, wrong or missing password.
    BadCredentials,
    /// CONNACK 0x05: no credentials while anonymous clients are refused.
    NotAuthorized,
    /// The TLS handshake failed (not TLS, untrusted client certificate)
    /// or did not finish within the connect timeout.
    TlsHandshake,
    /// The WebSocket upgrade failed (wrong path, no `mqtt` subprotocol,
    /// not HTTP) or did not finish within the connect timeout.
    WsHandshake,
    /// 5.0 CONNACK 0x8C: an enhanced authentication method (none is
    /// supported).
    BadAuthenticationMethod,
}

/// How many values the `reason` label of connection refusals has.
const REFUSALS: usize = 11;

impl Refusal {
    const ALL: [(Refusal, &'static str); REFUSALS] = [
        (Refusal::MaxConnections, "max_connections"),
        (Refusal::BadConnect, "bad_connect"),
        (Refusal::UnsupportedProtocol, "unsupported_protocol"),
        (Refusal::IdentifierRejected, "identifier_rejected"),
        (Refusal::ServerUnavailable, "server_unavailable"),
        (Refusal::PerIp, "max_connections_per_ip"),
        (Refusal::BadCredentials, "bad_credentials"),
        (Refusal::NotAuthorized, "not_authorized"),
        (Refusal::TlsHandshake, "tls_handshake"),
        (Refusal::WsHandshake, "ws_handshake"),
        (Refusal::BadAuthenticationMethod, "bad_auth_method"),
    ];
}

/// Which configured limit a client's request was refused for; one value
/// of the `reason` label of `astramq_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReason {
    /// A topic name or filter over `max-topic-length`.
    TopicLength,
    /// A topic name or filter over `max-topic-levels`.
    TopicLevels,
    /// A client id over `max-client-id-length` (CONNACK 0x02).
    ClientIdLength,
    /// A SUBSCRIBE beyond `max-subscriptions-per-client` (SUBACK 0x80).
    SubscriptionsPerClient,
    /// A new retained topic beyond `max-retained-messages` (not stored).
    RetainedMessages,
    /// A new retained topic beyond `max-retained-bytes` (not stored).
    RetainedBytes,
    /// A retained payload over `max-retained-payload` (not stored).
    RetainedPayload,
    /// A will payload over `max-will-payload` (connection closed).
    WillPayload,
    /// A new session beyond `max-sessions` (CONNACK 0x03).
    Sessions,
    /// A connection beyond `max-connections-per-ip` (closed at accept).
    ConnectionsPerIp,
    /// A keep-alive over `max-keep-alive` (held to the maximum).
    KeepAlive,
    /// A delivery beyond `max-queued-bytes-per-session` (dropped).
    QueuedBytes,
}

impl LimitReason {
    const ALL: [(LimitReason, &'static str); LIMIT_REASONS] = [
        (LimitReason::TopicLength, "topic_length"),
        (LimitReason::TopicLevels, "topic_levels"),
        (LimitReason::ClientIdLength, "client_id_length"),
        (
            LimitReason::SubscriptionsPerClient,
            "subscriptions_per_client",
        ),
        (LimitReason::RetainedMessages, "retained_messages"),
        (LimitReason::RetainedBytes, "retained_bytes"),
        (LimitReason::RetainedPayload, "retained_payload"),
        (LimitReason::WillPayload, "will_payload"),
        (LimitReason::Sessions, "sessions"),
        (LimitReason::ConnectionsPerIp, "connections_per_ip"),
        (LimitReason::KeepAlive, "keep_alive"),
        (LimitReason::QueuedBytes, "queued_bytes"),
    ];
}

/// How many values the `reason` label of limit refusals has.
const LIMIT_REASONS: usize = 12;

impl From<TopicLimit> for LimitReason {
    fn from(limit: TopicLimit) -> LimitReason {
        match limit {
            TopicLimit::Length => LimitReason::TopicLength,
            TopicLimit::Levels => LimitReason::TopicLevels,
        }
    }
}

/// Why a delivery was dropped.
#[derive(Debug, Clone, Copy)]
pub enum DropReason {
    /// A session's queue was full.
    QueueFull,
    /// QoS 0 messages are not queued for offline sessions.
    Qos0Offline,
    /// The message expired before it could be sent.
    Expired,
    /// No subscription matched the published message.
    NoSubscribers,
    /// An ACL refused it (unused: a denied PUBLISH is counted once, in
    /// `astramq_acl_denials_total`; kept so dashboards are stable).
    Acl,
    /// Larger than the 5.0 client's Maximum Packet Size: not sent to it.
    TooLarge,
}

impl DropReason {
    const ALL: [(DropReason, &'static str); 6] = [
        (DropReason::QueueFull, "queue_full"),
        (DropReason::Qos0Offline, "qos0_offline"),
        (DropReason::Expired, "expired"),
        (DropReason::NoSubscribers, "no_subscribers"),
        (DropReason::Acl, "acl"),
        (DropReason::TooLarge, "too_large_for_client"),
    ];
}

/// What an ACL denied; one value of the `action` label of
/// `astramq_acl_denials_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclDenial {
    /// A PUBLISH (acknowledged, not delivered).
    Publish,
    /// A SUBSCRIBE filter (SUBACK 0x80).
    Subscribe,
    /// A will, dropped at CONNECT.
    Will,
}

impl AclDenial {
    const LABELS: [&'static str; 3] = ["publish", "subscribe", "will"];
}

/// The node counters a delivery refused by a full queue is counted in,
/// handed to the cluster layer so that a refusal by a session's Redis
/// queue counts like one by a mailbox or the embedded store.
#[derive(Debug, Clone)]
pub struct QueueRefusalCounters {
    /// `astramq_messages_dropped_total{reason="queue_full"}`.
    pub dropped_queue_full: IntCounter,
    /// `astramq_limit_refusals_total{reason="queued_bytes"}`.
    pub queued_bytes: IntCounter,
}

/// The node's metrics.
pub struct Stats {
    /// Where every metric of the node is registered (cluster metrics too).
    pub registry: Registry,
    /// Connections accepted by the listener.
    pub connections_total: IntCounter,
    /// Times the listener stopped accepting for `max-connection-rate`.
    pub accept_pauses: IntCounter,
    /// Seconds the listener spent not accepting for `max-connection-rate`.
    pub accept_paused_seconds: Counter,
    /// Sessions currently connected.
    pub clients_connected: IntGauge,
    refused: [IntCounter; REFUSALS],
    limit_refusals: [IntCounter; LIMIT_REASONS],
    received: [IntCounter; 3],
    sent: [IntCounter; 3],
    /// Payload bytes received in PUBLISH packets.
    pub payload_bytes_received: IntCounter,
    /// Payload bytes sent in PUBLISH packets.
    pub payload_bytes_sent: IntCounter,
    dropped: [IntCounter; 6],
    acl_denials: [IntCounter; 3],
    /// Connections closed for breaking the protocol.
    pub protocol_errors: IntCounter,
    /// Unacknowledged outgoing QoS 1/2 messages, all sessions.
    pub inflight_messages: IntGauge,
    /// Sessions by state: `online`, `offline` (persistent, client away).
    pub sessions: IntGaugeVec,
    /// Subscriptions on this node.
    pub subscriptions: IntGauge,
    /// Retained messages (cluster-wide in a cluster).
    pub retained_messages: IntGauge,
    /// Deliveries waiting in connected sessions' mailboxes.
    pub queued_messages: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), &[label]),
    )
}

fn by_qos(vec: &IntCounterVec) -> [IntCounter; 3] {
    ["0", "1", "2"].map(|q| vec.with_label_values(&[q]))
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new(Registry::new())
    }
}

impl Stats {
    /// Registers the node's metrics in `registry`.
    pub fn new(registry: Registry) -> Stats {
        let r = &registry;
        let refused = counter_vec(
            r,
            "astramq_connections_refused_total",
            "Connections refused or closed before a session started, by reason.",
            "reason",
        );
        let limit_refusals = counter_vec(
            r,
            "astramq_limit_refusals_total",
            "Requests refused (or connections closed) for exceeding a configured limit, by limit.",
            "reason",
        );
        let received = counter_vec(
            r,
            "astramq_messages_received_total",
            "PUBLISH packets received from clients, by QoS.",
            "qos",
        );
        let sent = counter_vec(
            r,
            "astramq_messages_sent_total",
            "PUBLISH packets sent to clients (re-sends included), by QoS.",
            "qos",
        );
        let dropped = counter_vec(
            r,
            "astramq_messages_dropped_total",
            "Deliveries dropped, by reason.",
            "reason",
        );
        let acl_denials = counter_vec(
            r,
            "astramq_acl_denials_total",
            "Requests the ACL denied, by action (publish, subscribe, will).",
            "action",
        );
        let sessions = register(
            r,
            IntGaugeVec::new(
                Opts::new("astramq_sessions", "Sessions on this node, by state."),
                &["state"],
            ),
        );
        register_build_info(r, "node", env!("CARGO_PKG_VERSION"));
        Stats {
            connections_total: counter(r, "astramq_connections_total", "TCP connections accepted."),
            accept_pauses: counter(
                r,
                "astramq_accept_pauses_total",
                "Times the listener stopped accepting because max-connection-rate was reached.",
            ),
            accept_paused_seconds: register(
                r,
                Counter::new(
                    "astramq_accept_paused_seconds_total",
                    "Seconds the listener did not accept because max-connection-rate was reached.",
                ),
            ),
            clients_connected: gauge(
                r,
                "astramq_connections",
                "Client sessions currently connected.",
            ),
            refused: Refusal::ALL.map(|(_, label)| refused.with_label_values(&[label])),
            limit_refusals: LimitReason::ALL
                .map(|(_, label)| limit_refusals.with_label_values(&[label])),
            received: by_qos(&received),
            sent: by_qos(&sent),
            payload_bytes_received: counter(
                r,
                "astramq_received_bytes_total",
                "Payload bytes received in PUBLISH packets.",
            ),
            payload_bytes_sent: counter(
                r,
                "astramq_sent_bytes_total",
                "Payload bytes sent in PUBLISH packets.",
            ),
            dropped: DropReason::ALL.map(|(_, label)| dropped.with_label_values(&[label])),
            acl_denials: AclDenial::LABELS.map(|label| acl_denials.with_label_values(&[label])),
            protocol_errors: counter(
                r,
                "astramq_protocol_errors_total",
                "Connections closed for breaking the MQTT protocol.",
            ),
            inflight_messages: gauge(
                r,
                "astramq_inflight_messages",
                "Outgoing QoS 1/2 messages not yet acknowledged by clients.",
            ),
            sessions,
            subscriptions: gauge(
                r,
                "astramq_subscriptions",
                "Subscriptions of sessions on this node.",
            ),
            retained_messages: gauge(r, "astramq_retained_messages", "Retained messages stored."),
            queued_messages: gauge(
                r,
                "astramq_queued_messages",
                "Deliveries waiting for connected clients.",
            ),
            registry,
        }
    }

    /// Counts a refused connection.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }

    /// Counts an ACL denial.
    pub fn acl_denied(&self, what: AclDenial) {
        self.acl_denials[what as usize].inc();
    }

    /// Counts a request refused for a limit.
    pub fn limit_refused(&self, why: LimitReason) {
        self.limit_refusals[why as usize].inc();
    }

    /// The counters a refused queue write goes to (see
    /// [`QueueRefusalCounters`]).
    pub fn queue_refusal_counters(&self) -> QueueRefusalCounters {
        QueueRefusalCounters {
            dropped_queue_full: self.dropped[DropReason::QueueFull as usize].clone(),
            queued_bytes: self.limit_refusals[LimitReason::QueuedBytes as usize].clone(),
        }
    }

    /// Counts `n` requests refused for a limit.
    pub fn limit_refused_by(&self, why: LimitReason, n: u64) {
        self.limit_refusals[why as usize].inc_by(n);
    }

    /// Times requests were refused for the limit `why`.
    pub fn limit_refusals(&self, why: LimitReason) -> u64 {
        self.limit_refusals[why as usize].get()
    }

    /// Counts a received PUBLISH.
    pub fn received(&self, qos: Qos, payload_len: usize) {
        self.received[qos as usize].inc();
        self.payload_bytes_received.inc_by(payload_len as u64);
    }

    /// Counts a sent PUBLISH.
    pub fn sent(&self, qos: Qos, payload_len: usize) {
        self.sent[qos as usize].inc();
        self.payload_bytes_sent.inc_by(payload_len as u64);
    }

    /// Counts `n` dropped deliveries.
    pub fn dropped(&self, why: DropReason, n: u64) {
        self.dropped[why as usize].inc_by(n);
    }

    /// PUBLISH packets received, all QoS.
    pub fn received_total(&self) -> u64 {
        self.received.iter().map(IntCounter::get).sum()
    }

    /// PUBLISH packets sent, all QoS.
    pub fn sent_total(&self) -> u64 {
        self.sent.iter().map(IntCounter::get).sum()
    }

    /// Dropped deliveries, all reasons except "no subscribers" (a publish
    /// nobody wanted is not a lost delivery).
    pub fn dropped_total(&self) -> u64 {
        [
            DropReason::QueueFull,
            DropReason::Qos0Offline,
            DropReason::Expired,
            DropReason::Acl,
        ]
        .iter()
        .map(|d| self.dropped[*d as usize].get())
        .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_series_are_exported() {
        let stats = Stats::default();
        stats.received(Qos::AtLeastOnce, 10);
        stats.dropped(DropReason::QueueFull, 2);
        stats.refused(Refusal::IdentifierRejected);
        stats.refused(Refusal::BadCredentials);
        stats.limit_refused(TopicLimit::Levels.into());
        let text = astramq_shared::metrics::render(&stats.registry);
        assert!(text.contains("astramq_messages_received_total{qos=\"1\"} 1"));
        assert!(text.contains("astramq_messages_dropped_total{reason=\"queue_full\"} 2"));
        assert!(
            text.contains("astramq_connections_refused_total{reason=\"identifier_rejected\"} 1")
        );
        assert!(text.contains("astramq_connections_refused_total{reason=\"bad_credentials\"} 1"));
        assert!(text.contains("astramq_connections_refused_total{reason=\"not_authorized\"} 0"));
        assert!(text.contains("astramq_build_info{component=\"node\""));
        assert!(text.contains("astramq_limit_refusals_total{reason=\"topic_levels\"} 1"));
        assert!(text.contains("astramq_limit_refusals_total{reason=\"client_id_length\"} 0"));
        assert_eq!(stats.dropped_total(), 2);
    }
}
