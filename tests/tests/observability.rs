//! Metrics and dashboards end to end: the local stack's processes (Redis,
//! three nodes in a gossip + Redis cluster, the proxy) on free loopback
//! ports, a real Prometheus (Debian's package) scraping them every second
//! with a config rendered from the project's template, and MQTT traffic
//! from independent clients (`rumqttc`, raw sockets) through the proxy and
//! directly to the nodes.
//!
//! What is checked:
//! - every metric name the issue lists is on every node's and the proxy's
//!   `/metrics`, and the counters and gauges that traffic should move did
//!   move (messages, bytes, connections, drops, refusals, protocol errors,
//!   stream appends/reads, Redis round trips, proxy connections, bytes,
//!   rejects and dials);
//! - a backend that gossip still lists but that refuses connections (an
//!   extra, unscraped node killed a moment before) is counted in
//!   `astramq_proxy_dial_failures_total{backend}`, whose series only exist
//!   after a first failure;
//! - Prometheus reports every target `up`, before the traffic and after
//!   the queries;
//! - every PromQL expression of every panel of every dashboard returns data
//!   (at least one finite sample) once its variables are resolved the way
//!   Grafana resolves them (`label_values` through the series API) and
//!   `$__rate_interval` is 30s.
//!
//! A missing `prometheus` binary fails the test with instructions:
//! `scripts/test` installs it, so CI always has it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use astramq_tests::observability::cluster::Cluster;
use astramq_tests::observability::dashboards::{self, substitute};
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::observability::prometheus::{
    prometheus_binary, render_config, PrometheusServer,
};
use astramq_tests::wire::Connect;
use astramq_tests::{unique_id, within, RawClient, TestClient, TIMEOUT};
use rumqttc::QoS;

/// Node metric families the issue names (histograms by family name).
const NODE_FAMILIES: [&str; 22] = [
    "astramq_build_info",
    "astramq_connections",
    "astramq_connections_total",
    "astramq_connections_refused_total",
    "astramq_sessions",
    "astramq_subscriptions",
    "astramq_retained_messages",
    "astramq_messages_received_total",
    "astramq_messages_sent_total",
    "astramq_received_bytes_total",
    "astramq_sent_bytes_total",
    "astramq_messages_dropped_total",
    "astramq_protocol_errors_total",
    "astramq_inflight_messages",
    "astramq_queued_messages",
    "astramq_stream_appends_total",
    "astramq_stream_reads_total",
    "astramq_stream_lag",
    "astramq_redis_up",
    "astramq_redis_command_duration_seconds",
    "astramq_redis_errors_total",
    "astramq_membership_members",
];

/// Proxy metric families the issue names.
const PROXY_FAMILIES: [&str; 8] = [
    "astramq_proxy_connections",
    "astramq_proxy_connections_total",
    "astramq_proxy_bytes_total",
    "astramq_proxy_rejects_total",
    "astramq_proxy_dial_duration_seconds",
    "astramq_proxy_backends",
    "astramq_membership_members",
    "astramq_build_info",
];

/// Clients connected through the proxy and kept open during the checks.
const PROXY_CLIENTS: usize = 6;

/// Bound on the node gauges reflecting the traffic (one 5 s refresh + slack).
const GAUGES_TIMEOUT: Duration = Duration::from_secs(8);

/// Bound on Prometheus seeing every target up.
const TARGETS_UP_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound on every dashboard query returning data (all queries together).
const QUERIES_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_and_every_dashboard_query_returns_data_in_prometheus() -> Result<()> {
    // Fail first, and clearly, when Prometheus is not installed.
    prometheus_binary()?;
    let cluster = Cluster::start()?;
    let nodes_before = scrape_nodes(&cluster)?;
    let proxy_before = Exposition::scrape(cluster.proxy.metrics)?;

    let config = render_config("1s", &cluster.node_metrics(), &[cluster.proxy.metrics])?;
    let prometheus = PrometheusServer::start(&config)?;
    // Scraped once before the traffic, so rates and quantiles see it as an
    // increase rather than as the first value.
    wait_for_targets_up(&prometheus, 4).await?;

    // Clients stay connected until the end, so gauges are non-zero while
    // Prometheus is queried.
    let mut clients = drive_traffic(&cluster).await?;

    let nodes_after = scrape_nodes(&cluster)?;
    let proxy_after = Exposition::scrape(cluster.proxy.metrics)?;
    check_node_metrics(&nodes_before, &nodes_after)?;
    check_proxy_metrics(&proxy_before, &proxy_after)?;
    wait_for_node_gauges(&cluster).await?;
    provoke_dial_failure(&cluster, &mut clients).await?;

    check_dashboards(&prometheus).await?;
    // Still every target up at the end: nothing above broke a scrape.
    wait_for_targets_up(&prometheus, 4).await?;
    drop(clients);
    Ok(())
}

/// A backend that gossip still lists but that refuses connections (killed
/// a moment ago) costs the proxy a failed dial, counted per backend, before
/// it moves on to the next node. An extra gossip-only node is killed so the
/// scraped nodes stay up.
async fn provoke_dial_failure(cluster: &Cluster, clients: &mut Clients) -> Result<()> {
    let mut doomed = cluster.start_gossip_only_node("n4")?;
    cluster.wait_for_backends(4)?;
    doomed.kill()?;
    // Round-robin over four backends: four new clients start one dial each
    // at n4, well before gossip declares it failed (about a second).
    for _ in 0..4 {
        clients
            .kept
            .push(TestClient::connect(cluster.proxy.addr, &unique_id("obs-dial")).await?);
    }
    let page = Exposition::scrape(cluster.proxy.metrics)?;
    let failures = page.total("astramq_proxy_dial_failures_total", &[("backend", "n4")]);
    ensure!(
        failures >= 1.0,
        "no astramq_proxy_dial_failures_total{{backend=\"n4\"}} after dialling a killed node; proxy output:\n{}",
        cluster.proxy.log_tail()
    );
    cluster.wait_for_backends(3)?;
    Ok(())
}

fn scrape_nodes(cluster: &Cluster) -> Result<Vec<Exposition>> {
    cluster
        .nodes
        .iter()
        .map(|n| Exposition::scrape(n.metrics).with_context(|| format!("scraping node {}", n.id)))
        .collect()
}

/// Everything the traffic step leaves connected.
struct Clients {
    kept: Vec<TestClient>,
}

/// Drives traffic that should move every counter the dashboards show:
/// cross-node publishes at every QoS through the proxy, a retained message,
/// a publish nobody subscribes to, a persistent session with a queued
/// message, a refused CONNECT, a protocol error and a proxy reject.
async fn drive_traffic(cluster: &Cluster) -> Result<Clients> {
    let proxy = cluster.proxy.addr;
    let mut kept = Vec::new();

    // One subscriber directly on each node, so whichever node the proxy
    // gives the publisher, most deliveries cross nodes through Redis.
    let mut subscribers = Vec::new();
    for node in &cluster.nodes {
        let mut sub = TestClient::connect(node.process.addr(), &unique_id("obs-sub")).await?;
        sub.subscribe("obs/#", QoS::ExactlyOnce).await?;
        subscribers.push(sub);
    }
    let mut publisher = TestClient::connect(proxy, &unique_id("obs-pub")).await?;
    for sub in &mut subscribers {
        await_route(&mut publisher, sub).await?;
    }

    // A persistent session that goes offline with a subscription: the next
    // publish is queued for it in Redis.
    let parked_id = unique_id("obs-parked");
    let mut options = TestClient::options(proxy, &parked_id);
    options.set_clean_session(false);
    let mut parked = TestClient::connect_with(options).await?;
    parked.subscribe("obs/parked", QoS::AtLeastOnce).await?;
    parked.disconnect().await?;

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..10 {
            publisher
                .publish("obs/data", qos, false, format!("payload {i} at {qos:?}"))
                .await?;
        }
    }
    publisher
        .publish("obs/retained", QoS::AtLeastOnce, true, "kept")
        .await?;
    publisher
        .publish(
            "obs/parked",
            QoS::AtLeastOnce,
            false,
            "for the parked session",
        )
        .await?;
    publisher
        .publish("nobody/listens", QoS::AtMostOnce, false, "dropped")
        .await?;
    publisher
        .publish("obs/end", QoS::AtLeastOnce, false, "end")
        .await?;
    for sub in &mut subscribers {
        within(
            "the subscriber to receive up to obs/end",
            sub.publishes_until("obs/end"),
        )
        .await??;
    }

    // Refused: an unsupported protocol level, straight to a node.
    let bad = Connect::new(&unique_id("obs-bad")).with_protocol("MQTT", 9);
    let (_, connack) = RawClient::handshake(cluster.nodes[0].process.addr(), &bad).await?;
    ensure!(
        connack.code == 1,
        "level 9 CONNECT got CONNACK code {}",
        connack.code
    );

    // Protocol error: a second CONNECT on an open session.
    let connect = Connect::new(&unique_id("obs-twice"));
    let (mut twice, _) = RawClient::connected(cluster.nodes[1].process.addr(), &connect).await?;
    twice.send(&connect.encode()).await?;
    twice.expect_closed(TIMEOUT).await?;

    // Proxy reject: not MQTT at all.
    let mut http = RawClient::connect_tcp(proxy).await?;
    http.send(b"GET / HTTP/1.0\r\n\r\n").await?;
    http.expect_closed(TIMEOUT).await?;

    // Several clients through the proxy, kept open: the distribution panels.
    for _ in 0..PROXY_CLIENTS {
        kept.push(TestClient::connect(proxy, &unique_id("obs-idle")).await?);
    }
    kept.push(publisher);
    kept.extend(subscribers);
    Ok(Clients { kept })
}

/// Publishes probes until `subscriber` sees one: its subscription has
/// reached the publisher's node.
async fn await_route(publisher: &mut TestClient, subscriber: &mut TestClient) -> Result<()> {
    within("a subscription to reach the publisher's node", async {
        loop {
            publisher
                .publish("obs/probe", QoS::AtMostOnce, false, "probe")
                .await?;
            let seen = subscriber
                .next_publish_within(Duration::from_millis(100))
                .await?;
            if seen.is_some_and(|p| p.topic == "obs/probe") {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await?
}

/// Summed over nodes.
fn total(pages: &[Exposition], name: &str, labels: &[(&str, &str)]) -> f64 {
    pages.iter().map(|p| p.total(name, labels)).sum()
}

fn check_node_metrics(before: &[Exposition], after: &[Exposition]) -> Result<()> {
    for (i, page) in after.iter().enumerate() {
        let missing: Vec<&str> = NODE_FAMILIES
            .into_iter()
            .filter(|f| !page.has_family(f))
            .collect();
        ensure!(
            missing.is_empty(),
            "node {} lacks metrics {missing:?}",
            i + 1
        );
        ensure!(
            page.sum("astramq_build_info", &[("component", "node")]) == Some(1.0),
            "node {} has no astramq_build_info{{component=\"node\"}}",
            i + 1
        );
        ensure!(
            page.sum(
                "astramq_membership_members",
                &[("role", "broker"), ("state", "alive")]
            ) == Some(3.0),
            "node {} does not see 3 live brokers",
            i + 1
        );
        ensure!(
            page.sum("astramq_redis_up", &[]) == Some(1.0),
            "node {} reports Redis down",
            i + 1
        );
    }
    let moved = [
        ("astramq_connections_total", vec![]),
        ("astramq_messages_received_total", vec![("qos", "0")]),
        ("astramq_messages_received_total", vec![("qos", "1")]),
        ("astramq_messages_received_total", vec![("qos", "2")]),
        ("astramq_messages_sent_total", vec![("qos", "0")]),
        ("astramq_messages_sent_total", vec![("qos", "1")]),
        ("astramq_messages_sent_total", vec![("qos", "2")]),
        ("astramq_received_bytes_total", vec![]),
        ("astramq_sent_bytes_total", vec![]),
        (
            "astramq_messages_dropped_total",
            vec![("reason", "no_subscribers")],
        ),
        (
            "astramq_connections_refused_total",
            vec![("reason", "unsupported_protocol")],
        ),
        ("astramq_protocol_errors_total", vec![]),
        ("astramq_stream_appends_total", vec![]),
        ("astramq_stream_reads_total", vec![]),
        (
            "astramq_redis_command_duration_seconds_count",
            vec![("op", "forward")],
        ),
        (
            "astramq_redis_command_duration_seconds_count",
            vec![("op", "claim")],
        ),
        (
            "astramq_redis_command_duration_seconds_count",
            vec![("op", "retained")],
        ),
    ];
    let mut report = Vec::new();
    for (name, labels) in &moved {
        let (b, a) = (total(before, name, labels), total(after, name, labels));
        if a <= b {
            report.push(format!("{name}{labels:?}: {b} -> {a}"));
        }
    }
    ensure!(
        report.is_empty(),
        "node counters that did not move with traffic:\n  {}",
        report.join("\n  ")
    );
    Ok(())
}

/// Waits until the nodes' gauges show the clients, sessions, subscriptions
/// and retained message the traffic left behind (the retained count is
/// refreshed from the store every 5 s, hence the wait).
async fn wait_for_node_gauges(cluster: &Cluster) -> Result<()> {
    let at_least = [
        ("astramq_connections", vec![], 4.0),
        ("astramq_sessions", vec![("state", "online")], 4.0),
        ("astramq_sessions", vec![("state", "offline")], 1.0),
        ("astramq_subscriptions", vec![], 3.0),
        ("astramq_retained_messages", vec![], 1.0),
    ];
    let deadline = Instant::now() + GAUGES_TIMEOUT;
    loop {
        let pages = scrape_nodes(cluster)?;
        let short: Vec<String> = at_least
            .iter()
            .filter_map(|(name, labels, min)| {
                let value = total(&pages, name, labels);
                (value < *min).then(|| format!("{name}{labels:?} = {value}, expected >= {min}"))
            })
            .collect();
        if short.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "node gauges after {GAUGES_TIMEOUT:?} (summed over nodes):\n  {}",
                short.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn check_proxy_metrics(before: &Exposition, after: &Exposition) -> Result<()> {
    let missing: Vec<&str> = PROXY_FAMILIES
        .into_iter()
        .filter(|f| !after.has_family(f))
        .collect();
    ensure!(missing.is_empty(), "the proxy lacks metrics {missing:?}");
    ensure!(
        after.sum("astramq_build_info", &[("component", "proxy")]) == Some(1.0),
        "the proxy has no astramq_build_info{{component=\"proxy\"}}"
    );
    ensure!(
        after.sum("astramq_proxy_backends", &[]) == Some(3.0),
        "the proxy does not have 3 usable backends"
    );
    ensure!(
        after.total("astramq_membership_members", &[("state", "alive")]) >= 4.0,
        "the proxy does not see 4 live members"
    );
    ensure!(
        after.sum(
            "astramq_membership_members",
            &[("role", "broker"), ("state", "alive")]
        ) == Some(3.0),
        "the proxy does not see 3 live brokers"
    );
    let moved = [
        ("astramq_proxy_connections_total", vec![]),
        ("astramq_proxy_bytes_total", vec![("direction", "upstream")]),
        (
            "astramq_proxy_bytes_total",
            vec![("direction", "downstream")],
        ),
        ("astramq_proxy_rejects_total", vec![]),
        ("astramq_proxy_dial_duration_seconds_count", vec![]),
    ];
    let mut report = Vec::new();
    for (name, labels) in &moved {
        let (b, a) = (before.total(name, labels), after.total(name, labels));
        if a <= b {
            report.push(format!("{name}{labels:?}: {b} -> {a}"));
        }
    }
    ensure!(
        report.is_empty(),
        "proxy counters that did not move with traffic:\n  {}",
        report.join("\n  ")
    );
    let open = after.total("astramq_proxy_connections", &[]);
    ensure!(
        open >= PROXY_CLIENTS as f64,
        "the proxy relays {open} connections, expected >= {PROXY_CLIENTS}"
    );
    Ok(())
}

/// Waits until Prometheus has scraped every target successfully.
async fn wait_for_targets_up(prometheus: &PrometheusServer, count: usize) -> Result<()> {
    let deadline = Instant::now() + TARGETS_UP_TIMEOUT;
    loop {
        let targets = prometheus.targets()?;
        let up = targets.iter().filter(|t| t.health == "up").count();
        if targets.len() == count && up == count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = targets
                .iter()
                .map(|t| format!("{} {} {} {}", t.job, t.instance, t.health, t.last_error))
                .collect();
            bail!(
                "Prometheus did not see {count} targets up within {TARGETS_UP_TIMEOUT:?}: {states:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Evaluates every panel query of every dashboard until each returns data,
/// and reports all that never did.
async fn check_dashboards(prometheus: &PrometheusServer) -> Result<()> {
    let deadline = Instant::now() + QUERIES_TIMEOUT;
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut evaluated = 0;
    for dashboard in dashboards::load_all()? {
        let variables = wait_for_variables(prometheus, &dashboard, deadline).await?;
        eprintln!(
            "[observability] {} variables: {variables:?}",
            dashboard.name()
        );
        for query in dashboard.queries() {
            let expr = substitute(&query.expr, &variables);
            let key = format!("{} / {} / {}", dashboard.name(), query.panel, query.ref_id);
            pending.insert(key, expr);
            evaluated += 1;
        }
    }
    let mut last_answer: HashMap<String, String> = HashMap::new();
    loop {
        let mut still = BTreeMap::new();
        for (key, expr) in pending {
            match prometheus.query(&expr) {
                Ok(samples) if samples.iter().any(|s| s.value.is_finite()) => {}
                Ok(samples) => {
                    last_answer.insert(
                        key.clone(),
                        format!("{} samples, none finite", samples.len()),
                    );
                    still.insert(key, expr);
                }
                Err(e) => {
                    last_answer.insert(key.clone(), format!("{e:#}"));
                    still.insert(key, expr);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            eprintln!("[observability] all {evaluated} dashboard queries returned data");
            return Ok(());
        }
        if Instant::now() >= deadline {
            let report: Vec<String> = pending
                .iter()
                .map(|(key, expr)| {
                    format!(
                        "{key}\n    {expr}\n    -> {}",
                        last_answer.get(key).map_or("", String::as_str)
                    )
                })
                .collect();
            bail!(
                "{} of {evaluated} dashboard queries returned no data within {QUERIES_TIMEOUT:?}:\n{}",
                pending.len(),
                report.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Resolves a dashboard's variables, retrying until Prometheus has the
/// series they are read from.
async fn wait_for_variables(
    prometheus: &PrometheusServer,
    dashboard: &dashboards::Dashboard,
    deadline: Instant,
) -> Result<HashMap<String, String>> {
    loop {
        match dashboard.resolve_variables(prometheus, &HashMap::new()) {
            Ok(values) => return Ok(values),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context(format!("resolving the variables of {}", dashboard.name()))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
