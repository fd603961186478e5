//! `astramq-proxy`: the MQTT-aware TCP load balancer in front of an AstraMQ
//! cluster, built on pingora as an L4 service.
//!
//! A client connects to the proxy; the proxy reads its CONNECT, picks a
//! live broker, dials it (trying the next on failure), forwards the CONNECT
//! unchanged (optionally behind a PROXY v2 header) and then copies bytes
//! both ways. The broker set comes from gossip membership, or a static list.
//!
//! # Layout
//!
//! - `main` — configuration, logging, the pingora server and its signals.
//! - [`config`] — flags, `ASTRAMQ_*` environment, TOML file.
//! - [`listener`] — the MQTT socket, bound here and handed to pingora.
//! - [`admission`] — connection caps (total, per address) and rate, on accept.
//! - [`app`] — the pingora `ServerApp`: one client connection end to end.
//! - [`connect`] — the bounds-checked CONNECT reader.
//! - [`balance`] — backend order: round-robin, client-id (Ketama), least-connections.
//! - [`backends`] — the live backend set, fed by membership.
//! - [`control`] — metrics endpoint and membership as a pingora service.
//! - [`relay`] — the bidirectional copy with backpressure and half-close.
//! - [`metrics`] — Prometheus metrics, `/metrics` and `/readyz`.
//!
//! # Threads and shutdown
//!
//! pingora gives each service its own runtime: client traffic runs on
//! `--threads` workers (default: one per CPU), the control plane on one.
//! Measured on 2 cores: MQTT publishers fire in bursts (many clients on the
//! same tick), and one thread serialises a burst, so 2 threads cut the
//! added p50 latency from ~140 µs to ~60 µs and raised throughput ~5%.
//! SIGTERM (and SIGINT, SIGQUIT) stops the listener and closes every client
//! connection at once (MQTT clients reconnect, through another proxy), the
//! proxy leaves the cluster, and the process exits within
//! [`GRACE_PERIOD_SECS`] + [`RUNTIME_STOP_SECS`] (pingora's default grace
//! period would be 300 s).

mod admission;
mod app;
mod backends;
mod balance;
mod config;
mod control;
mod listener;
mod metrics;
mod relay;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use astramq_proxy::connect;
use astramq_shared::membership::{MembershipConfig, Role};
use async_trait::async_trait;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service as ListeningService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::admission::Admission;
use crate::app::{ClientTransport, MqttProxy};
use crate::backends::BackendSet;
use crate::balance::Balancer;
use crate::config::ProxyConfig;
use crate::control::{ControlPlane, Fatal};
use crate::listener::PreboundListener;
use crate::metrics::{ProxyMetrics, ProxyOps};

/// Seconds pingora waits after SIGTERM before stopping its runtimes; covers
/// the graceful gossip leave (about 0.5–1 s).
const GRACE_PERIOD_SECS: u64 = 1;

/// Seconds the runtimes get to finish their tasks after the grace period.
const RUNTIME_STOP_SECS: u64 = 2;

fn main() -> anyhow::Result<()> {
    let config = ProxyConfig::load()
        .unwrap_or_else(|error| astramq_shared::config::exit_invalid("astramq-proxy", &error));
    // Also installs the `log` → `tracing` bridge (tracing-subscriber's
    // `tracing-log` feature), so pingora's own log lines join ours.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // Bound here, before anything starts, so a taken port fails at once and
    // port 0 works; see `listener.rs`. The plain listener first.
    let sockets = bind_listeners(&config)?;

    let metrics = Arc::new(ProxyMetrics::new());
    let backends = Arc::new(BackendSet::with_fallback(&config.backends));
    let admission = Arc::new(Admission::new(config.admission));
    let fatal = Arc::new(Fatal::default());
    let (signals_ready_tx, signals_ready) = watch::channel(false);

    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: config.threads,
            grace_period_seconds: Some(GRACE_PERIOD_SECS),
            graceful_shutdown_timeout_seconds: Some(RUNTIME_STOP_SECS),
            upgrade_sock: format!("/tmp/astramq-proxy-{}.sock", std::process::id()),
            ..ServerConf::default()
        },
    );
    server.bootstrap();

    let control = server.add_service(ControlPlane {
        metrics_listen: config.metrics_listen,
        membership: config.gossip.as_ref().map(|g| MembershipConfig {
            node_id: config.node_id.clone(),
            role: Role::Proxy,
            gossip_listen: g.listen,
            join: g.join.clone(),
            mqtt_addr: None,
            metrics_addr: None, // the bound address, filled in by the control plane
            encryption_key: g.key.clone(),
        }),
        ops: Arc::new(ProxyOps {
            metrics: metrics.clone(),
            backends: backends.clone(),
            admission: admission.clone(),
        }),
        backends: backends.clone(),
        metrics: metrics.clone(),
        fatal: fatal.clone(),
    });

    // One pingora service per listener, all the same application (sharing
    // admission, backends and metrics) behind their own handshakes.
    let mut bound = None;
    for (socket, transport) in sockets {
        let local = socket
            .local_addr()
            .with_context(|| format!("reading the bound {}:// address", transport.scheme()))?;
        bound.get_or_insert(local);
        let scheme = transport.scheme();
        let app = MqttProxy {
            admission: admission.clone(),
            backends: backends.clone(),
            balancer: Balancer::new(config.balance),
            metrics: metrics.clone(),
            options: config.connection.clone(),
            transport,
        };
        let mut service = ListeningService::new(scheme.to_owned(), app);
        // Unbuffered: the relay does its own buffering and flushing.
        service.add_listener(
            ListenerConfig::tcp(listener::endpoint_key(local))
                .l4_buffer(L4BufferSettings::unbuffered()),
        );
        let service = PreboundListener::new(
            service,
            scheme,
            socket,
            fatal.clone(),
            signals_ready.clone(),
        )
        .with_context(|| format!("preparing the {scheme}:// socket"))?;
        server.add_service(service).add_dependency(&control);
    }
    let bound = bound.context("no MQTT listener")?;

    tracing::info!(
        listen = %bound,
        balance = ?config.balance,
        gossip = config.gossip.is_some(),
        static_backends = config.backends.len(),
        proxy_protocol = config.connection.proxy_protocol,
        max_connections = config.admission.max_connections,
        max_connections_per_ip = config.admission.max_connections_per_ip,
        max_connection_rate = config.admission.max_connection_rate,
        connect_timeout = ?config.connection.connect_timeout,
        threads = config.threads,
        "astramq-proxy starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            fatal: fatal.clone(),
            ready: signals_ready_tx,
            tls: config.tls_certificates(),
        }),
    });
    if fatal.is_tripped() {
        anyhow::bail!("astramq-proxy stopped after a fatal error (see the log above)");
    }
    tracing::info!("astramq-proxy stopped");
    Ok(())
}

/// Binds every configured listener (the plain one first) with what it
/// speaks, naming the listener and address when one cannot be bound.
fn bind_listeners(
    config: &ProxyConfig,
) -> anyhow::Result<Vec<(std::net::TcpListener, ClientTransport)>> {
    let mut wanted = vec![(config.listen, ClientTransport::Plain)];
    if let Some((addr, tls)) = &config.tls {
        wanted.push((*addr, ClientTransport::Tls(tls.clone())));
    }
    if let Some(addr) = config.ws_listen {
        wanted.push((addr, ClientTransport::Ws));
    }
    if let Some((addr, tls)) = &config.wss {
        wanted.push((*addr, ClientTransport::Wss(tls.clone())));
    }
    wanted
        .into_iter()
        .map(|(addr, transport)| {
            let socket = std::net::TcpListener::bind(addr).with_context(|| {
                format!("cannot listen for {}:// on {addr}", transport.scheme())
            })?;
            Ok((socket, transport))
        })
        .collect()
}

/// What ends the server: SIGTERM, SIGINT or SIGQUIT (all graceful: listener
/// closed, connections closed, cluster left), or a [`Fatal`] error (at once).
/// Hot upgrade by SIGQUIT is not used by AstraMQ. SIGHUP does not end it:
/// it re-reads the TLS files.
struct Signals {
    /// Tripped when the proxy cannot go on.
    fatal: Arc<Fatal>,
    /// Set once the handlers are installed; the readiness line waits for it
    /// so a SIGTERM sent right after it is a graceful stop, not a kill.
    ready: watch::Sender<bool>,
    /// The TLS listeners' certificates, re-read on SIGHUP.
    tls: Option<Arc<astramq_shared::tls::ServerTls>>,
}

impl Signals {
    /// Re-reads the TLS files: new handshakes use the new certificates;
    /// bad files keep the old ones.
    fn reload_tls(&self) {
        let Some(tls) = &self.tls else {
            tracing::info!("SIGHUP received: no TLS listener, nothing to reload");
            return;
        };
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificates reloaded"),
            Err(error) => {
                tracing::error!(%error, "TLS certificates not reloaded; keeping the previous ones")
            }
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let installed = (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::quit())?,
                signal(SignalKind::hangup())?,
            ))
        })();
        let (mut term, mut int, mut quit, mut hangup) = match installed {
            Ok(signals) => signals,
            Err(error) => {
                tracing::error!(%error, "cannot install signal handlers");
                self.fatal.trip();
                return ShutdownSignal::FastShutdown;
            }
        };
        let _ = self.ready.send(true);
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received: closing connections and leaving"),
                _ = int.recv() => tracing::info!("SIGINT received: closing connections and leaving"),
                _ = quit.recv() => tracing::info!("SIGQUIT received: closing connections and leaving"),
                _ = hangup.recv() => {
                    self.reload_tls();
                    continue;
                }
                () = self.fatal.tripped() => return ShutdownSignal::FastShutdown,
            }
            return ShutdownSignal::GracefulTerminate;
        }
    }
}
