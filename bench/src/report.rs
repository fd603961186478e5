//! What a run reports: one serializable object per run (`--json`) and the
//! same figures as a few human-readable lines.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::conn::ConnPlan;
use crate::load::LoadPlan;
use crate::procstat::Usage;
use crate::subscriber::Counts;

/// Percentiles of a latency histogram recorded in nanoseconds, in µs.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl From<&Histogram<u64>> for LatencySummary {
    fn from(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub mode: &'static str,
    pub label: String,
    /// MQTT version: "3.1.1" or "5.0".
    pub protocol: &'static str,
    pub publishers: usize,
    pub subscribers: usize,
    pub wildcard_subscribers: usize,
    pub topics: usize,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Messages per second per publisher; `null` = flat out.
    pub rate_per_publisher: Option<f64>,
    pub inflight: usize,
    /// Closed-loop cap on outstanding deliveries; `null` = open loop.
    pub max_outstanding: Option<u64>,
    pub warmup_s: f64,
    /// Measured length of the timed window.
    pub window_s: f64,
    pub sent: u64,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub delivered: u64,
    pub delivered_per_s: f64,
    /// Deliveries / deliveries the sends should have caused (≈1 when none are lost;
    /// messages in flight at the window's edges make it drift slightly).
    pub delivery_ratio: Option<f64>,
    pub latency: LatencySummary,
    pub broker: Option<Usage>,
    /// Broker CPU time per delivered message, µs.
    pub broker_cpu_us_per_msg: Option<f64>,
    /// The bench's own CPU use in the window, % of one core.
    pub bench_cpu_percent: f64,
    pub errors: Vec<String>,
}

impl LoadReport {
    pub fn new(
        plan: &LoadPlan,
        window_s: f64,
        counts: Counts,
        latency: LatencySummary,
        broker: Option<Usage>,
        bench_cpu_s: f64,
        errors: Vec<String>,
    ) -> Self {
        let per_s = |n: u64| n as f64 / window_s;
        let broker_cpu_us_per_msg = broker
            .as_ref()
            .filter(|_| counts.delivered > 0)
            .map(|b| b.cpu_s * 1e6 / counts.delivered as f64);
        LoadReport {
            mode: "load",
            label: plan.label.clone(),
            protocol: plan.protocol.name(),
            publishers: plan.publishers,
            subscribers: plan.subscribers,
            wildcard_subscribers: plan.wildcard_subscribers,
            topics: plan.topics,
            qos: plan.qos,
            payload_bytes: plan.payload,
            rate_per_publisher: plan.rate,
            inflight: plan.inflight,
            max_outstanding: plan.max_outstanding,
            warmup_s: plan.warmup.as_secs_f64(),
            window_s,
            sent: counts.sent,
            sent_per_s: per_s(counts.sent),
            acked_per_s: per_s(counts.acked),
            delivered: counts.delivered,
            delivered_per_s: per_s(counts.delivered),
            delivery_ratio: (counts.expected > 0)
                .then(|| counts.delivered as f64 / counts.expected as f64),
            latency,
            broker,
            broker_cpu_us_per_msg,
            bench_cpu_percent: 100.0 * bench_cpu_s / window_s,
            errors,
        }
    }

    pub fn human(&self) -> String {
        let pace = match self.rate_per_publisher {
            Some(rate) => format!("{rate} msg/s per publisher"),
            None if self.qos > 0 => format!("flat out (window {})", self.inflight),
            None => "flat out".to_string(),
        };
        let pace = match self.max_outstanding {
            Some(cap) => format!("{pace}, closed loop ≤ {cap} outstanding"),
            None => pace,
        };
        let mut out = format!(
            "load {} (MQTT {}): {} pub -> {} sub (+{} wildcard), {} topics, QoS {}, {} B, {pace}, {:.1} s window\n",
            self.label,
            self.protocol,
            self.publishers,
            self.subscribers,
            self.wildcard_subscribers,
            self.topics,
            self.qos,
            self.payload_bytes,
            self.window_s
        );
        out += &format!(
            "  delivered {:.0} msg/s (sent {:.0} msg/s, acked {:.0} msg/s, delivery ratio {})\n",
            self.delivered_per_s,
            self.sent_per_s,
            self.acked_per_s,
            self.delivery_ratio
                .map_or("-".into(), |r| format!("{r:.3}"))
        );
        let l = &self.latency;
        out += &format!(
            "  latency µs p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  (n={})\n",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
        );
        if let Some(b) = &self.broker {
            out += &format!(
                "  broker cpu {:.1}% of a core, {} µs per delivered msg; RSS {:.1} -> {:.1} MiB\n",
                b.cpu_percent,
                self.broker_cpu_us_per_msg
                    .map_or("-".into(), |c| format!("{c:.2}")),
                b.rss_before_kib as f64 / 1024.0,
                b.rss_after_kib as f64 / 1024.0
            );
        }
        out += &format!("  bench cpu {:.1}% of a core\n", self.bench_cpu_percent);
        for error in self.errors.iter().take(5) {
            out += &format!("  error: {error}\n");
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    pub mode: &'static str,
    pub label: String,
    /// MQTT version: "3.1.1" or "5.0".
    pub protocol: &'static str,
    pub requested: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub source_ips: usize,
    /// From the first connect to the last CONNACK.
    pub connect_s: f64,
    pub connects_per_s: f64,
    pub connect_latency: LatencySummary,
    /// Usage from before the first connect to after the settle pause.
    pub broker: Option<Usage>,
    /// Broker RSS growth / connections held, bytes.
    pub rss_per_connection_bytes: Option<f64>,
    /// Broker CPU time / connections made, µs.
    pub broker_cpu_us_per_connection: Option<f64>,
}

impl ConnReport {
    pub fn new(
        plan: &ConnPlan,
        connected: usize,
        failed: usize,
        first_error: Option<String>,
        connect_s: f64,
        connect_latency: LatencySummary,
        broker: Option<Usage>,
    ) -> Self {
        let per_conn = |x: f64| (connected > 0).then(|| x / connected as f64);
        ConnReport {
            mode: "conn",
            label: plan.label.clone(),
            protocol: plan.protocol.name(),
            requested: plan.connections,
            connected,
            failed,
            first_error,
            source_ips: plan.source_ips,
            connect_s,
            connects_per_s: connected as f64 / connect_s.max(1e-9),
            connect_latency,
            rss_per_connection_bytes: broker.as_ref().and_then(|b| {
                per_conn((b.rss_after_kib as f64 - b.rss_before_kib as f64) * 1024.0)
            }),
            broker_cpu_us_per_connection: broker.as_ref().and_then(|b| per_conn(b.cpu_s * 1e6)),
            broker,
        }
    }

    pub fn human(&self) -> String {
        let mut out = format!(
            "conn {} (MQTT {}): {} of {} connected ({} failed) from {} source IPs in {:.2} s: {:.0} connects/s\n",
            self.label,
            self.protocol,
            self.connected,
            self.requested,
            self.failed,
            self.source_ips,
            self.connect_s,
            self.connects_per_s
        );
        let l = &self.connect_latency;
        out += &format!(
            "  connect+CONNACK µs p50 {:.0}  p99 {:.0}  max {:.0}\n",
            l.p50_us, l.p99_us, l.max_us
        );
        if let Some(b) = &self.broker {
            out += &format!(
                "  broker RSS {:.1} -> {:.1} MiB: {} bytes per connection; cpu {} µs per connection\n",
                b.rss_before_kib as f64 / 1024.0,
                b.rss_after_kib as f64 / 1024.0,
                self.rss_per_connection_bytes.map_or("-".into(), |r| format!("{r:.0}")),
                self.broker_cpu_us_per_connection.map_or("-".into(), |c| format!("{c:.1}"))
            );
        }
        if let Some(error) = &self.first_error {
            out += &format!("  first error: {error}\n");
        }
        out
    }
}
