//! Proxy configuration: command-line flags, `ASTRAMQ_*` environment
//! variables and an optional TOML file, in that order of precedence, over
//! documented defaults — the same scheme as the node.
//!
//! The TOML file uses the long flag names as keys (`dial-timeout-ms = 500`,
//! `backends = ["10.0.0.1:1883"]`, `proxy-protocol = true`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use astramq_shared::config::Layered;
use astramq_shared::tls::{ServerTls, TlsFiles};
use astramq_shared::ws::WsLimits;
use clap::Parser;
use serde::Deserialize;

use crate::admission::AdmissionLimits;
use crate::app::ConnectionOptions;
use crate::balance::Strategy;

/// `--connect-timeout` default, seconds.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;

/// Longest `--connect-timeout` accepted: beyond an hour a silent or
/// dribbling client could hold its socket for as long as it likes.
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 3600;

/// `--max-connect-size` default, bytes.
pub const DEFAULT_MAX_CONNECT_SIZE: usize = 65_536;

/// `--ws-max-message-size` default, bytes: the node's default
/// `--max-packet-size` (1 MiB) plus the largest MQTT fixed header.
pub const DEFAULT_WS_MAX_MESSAGE_SIZE: usize = 1024 * 1024 + 5;

/// `--max-connections` default. A relayed connection costs the proxy two
/// file descriptors and about 40 KiB (two 16 KiB relay buffers plus the
/// task), so 100,000 is about 4 GiB at the cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// `--max-connections-per-ip` default: room for a NAT gateway with many
/// devices behind it, far from what one address may take alone.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;

/// `--max-connection-rate` default, per second: a reconnect storm of
/// [`DEFAULT_MAX_CONNECTIONS`] clients is admitted over 20 s instead of
/// landing on the brokers (each CONNECT is a session claim in Redis) at once.
pub const DEFAULT_MAX_CONNECTION_RATE: u32 = 5000;

/// Settings as given; every field optional so the sources can be layered.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "astramq-proxy",
    version,
    about = "AstraMQ proxy: MQTT-aware TCP load balancer in front of astramq-node brokers."
)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// TOML file with any of these settings (same names as the long flags).
    #[arg(long, env = "ASTRAMQ_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// MQTT listen address; port 0 picks a free port (printed at start) [default: 0.0.0.0:1883].
    #[arg(long, env = "ASTRAMQ_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// MQTT over TLS listen address, in addition to `--listen`; needs `--tls-cert` and `--tls-key` [default: off].
    #[arg(long, env = "ASTRAMQ_TLS_LISTEN", value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,

    /// MQTT over WebSocket listen address (path `/mqtt`, subprotocol `mqtt`), in addition to `--listen`; relayed to nodes as plain MQTT over TCP [default: off].
    #[arg(long, env = "ASTRAMQ_WS_LISTEN", value_name = "ADDR")]
    pub ws_listen: Option<SocketAddr>,

    /// MQTT over WebSocket inside TLS listen address (path `/mqtt`, subprotocol `mqtt`); needs `--tls-cert` and `--tls-key` [default: off].
    #[arg(long, env = "ASTRAMQ_WSS_LISTEN", value_name = "ADDR")]
    pub wss_listen: Option<SocketAddr>,

    /// Largest WebSocket message (and frame) accepted from a client, in bytes; keep it at least the nodes' `--max-packet-size` + 5 [default: 1048581].
    #[arg(long, env = "ASTRAMQ_WS_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub ws_max_message_size: Option<usize>,

    /// PEM certificate chain of the TLS listeners (`--tls-listen`, `--wss-listen`), leaf first; re-read on SIGHUP [default: none].
    #[arg(long, env = "ASTRAMQ_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`; re-read on SIGHUP [default: none].
    #[arg(long, env = "ASTRAMQ_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: TLS clients must present a certificate they signed (the CONNECT still goes to the node unchanged); re-read on SIGHUP [default: none, no client certificates].
    #[arg(long, env = "ASTRAMQ_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Prometheus metrics and health endpoint address [default: off].
    #[arg(long, env = "ASTRAMQ_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// This proxy's gossip member name [default: proxy-<hostname>-<pid>].
    #[arg(long, env = "ASTRAMQ_NODE_ID")]
    pub node_id: Option<String>,

    /// UDP+TCP address for gossip membership; gossip is off without it [default: off].
    #[arg(long, env = "ASTRAMQ_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,

    /// Gossip addresses of members to join (comma-separated); any one is enough.
    #[arg(long, env = "ASTRAMQ_JOIN", value_delimiter = ',')]
    pub join: Option<Vec<SocketAddr>>,

    /// Shared gossip encryption key: 16/24/32 bytes as base64 or hex [default: plaintext].
    #[arg(long, env = "ASTRAMQ_GOSSIP_KEY", hide_env_values = true)]
    pub gossip_key: Option<String>,

    /// Static broker MQTT addresses (comma-separated), used while gossip is off or knows no live broker.
    #[arg(long, env = "ASTRAMQ_BACKENDS", value_delimiter = ',')]
    pub backends: Option<Vec<SocketAddr>>,

    /// Backend choice for new clients [default: round-robin].
    #[arg(long, env = "ASTRAMQ_BALANCE", value_enum)]
    pub balance: Option<Strategy>,

    /// Seconds a new client may take to send its CONNECT [default: 10].
    #[arg(long, env = "ASTRAMQ_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<u64>,

    /// Milliseconds allowed for one TCP connect to a broker before the next is tried [default: 1000].
    #[arg(long, env = "ASTRAMQ_DIAL_TIMEOUT_MS")]
    pub dial_timeout_ms: Option<u64>,

    /// Largest CONNECT packet accepted, in bytes [default: 65536].
    #[arg(long, env = "ASTRAMQ_MAX_CONNECT_SIZE")]
    pub max_connect_size: Option<usize>,

    /// Client sockets held at once, before and after CONNECT; more are closed on accept [default: 100000].
    #[arg(long, env = "ASTRAMQ_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Client sockets held at once per client address (IPv6: per /64) [default: 1000].
    #[arg(long, env = "ASTRAMQ_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

    /// New client sockets accepted per second (a burst of one second's worth is allowed) [default: 5000].
    #[arg(long, env = "ASTRAMQ_MAX_CONNECTION_RATE")]
    pub max_connection_rate: Option<u32>,

    /// Send a PROXY protocol v2 header to brokers so they see client addresses [default: false].
    #[arg(
        long,
        env = "ASTRAMQ_PROXY_PROTOCOL",
        num_args = 0..=1,
        default_missing_value = "true",
        require_equals = true
    )]
    pub proxy_protocol: Option<bool>,

    /// Worker threads for client traffic [default: number of CPUs].
    #[arg(long, env = "ASTRAMQ_THREADS")]
    pub threads: Option<usize>,
}

impl Layered for Settings {
    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn or(self, lower: Settings) -> Settings {
        Settings {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            tls_listen: self.tls_listen.or(lower.tls_listen),
            ws_listen: self.ws_listen.or(lower.ws_listen),
            wss_listen: self.wss_listen.or(lower.wss_listen),
            ws_max_message_size: self.ws_max_message_size.or(lower.ws_max_message_size),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_client_ca: self.tls_client_ca.or(lower.tls_client_ca),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            node_id: self.node_id.or(lower.node_id),
            gossip_listen: self.gossip_listen.or(lower.gossip_listen),
            join: self.join.or(lower.join),
            gossip_key: self.gossip_key.or(lower.gossip_key),
            backends: self.backends.or(lower.backends),
            balance: self.balance.or(lower.balance),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            dial_timeout_ms: self.dial_timeout_ms.or(lower.dial_timeout_ms),
            max_connect_size: self.max_connect_size.or(lower.max_connect_size),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(lower.max_connections_per_ip),
            max_connection_rate: self.max_connection_rate.or(lower.max_connection_rate),
            proxy_protocol: self.proxy_protocol.or(lower.proxy_protocol),
            threads: self.threads.or(lower.threads),
        }
    }
}

/// Gossip settings, when membership is on.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// Where gossip binds.
    pub listen: SocketAddr,
    /// Seeds to join.
    pub join: Vec<SocketAddr>,
    /// Shared key, if any.
    pub key: Option<String>,
}

/// The resolved configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// MQTT listen address.
    pub listen: SocketAddr,
    /// The MQTT over TLS listener and its certificates, if enabled.
    pub tls: Option<(SocketAddr, Arc<ServerTls>)>,
    /// The MQTT over WebSocket listener, if enabled.
    pub ws_listen: Option<SocketAddr>,
    /// The WebSocket-inside-TLS listener, if enabled; its certificates are
    /// the same object as the TLS listener's.
    pub wss: Option<(SocketAddr, Arc<ServerTls>)>,
    /// Metrics endpoint, if enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// Gossip member name.
    pub node_id: String,
    /// Membership settings; `None` runs on `backends` alone.
    pub gossip: Option<GossipSettings>,
    /// Static fallback backends.
    pub backends: Vec<SocketAddr>,
    /// Backend choice.
    pub balance: Strategy,
    /// Per-connection limits and options.
    pub connection: ConnectionOptions,
    /// Which new sockets are taken at all.
    pub admission: AdmissionLimits,
    /// Threads of the client-traffic runtime.
    pub threads: usize,
}

impl ProxyConfig {
    /// The certificates of `--tls-listen` and `--wss-listen` (one
    /// configuration for both), for SIGHUP to reload.
    pub fn tls_certificates(&self) -> Option<Arc<ServerTls>> {
        self.tls
            .as_ref()
            .or(self.wss.as_ref())
            .map(|(_, tls)| tls.clone())
    }

    /// Reads flags and environment, then the file they name, and resolves.
    pub fn load() -> anyhow::Result<ProxyConfig> {
        ProxyConfig::resolve(astramq_shared::config::load::<Settings>()?)
    }

    /// Applies defaults and checks values.
    pub fn resolve(s: Settings) -> anyhow::Result<ProxyConfig> {
        let (tls, wss) = tls(&s)?;
        let backends = s.backends.unwrap_or_default();
        let gossip = s.gossip_listen.map(|listen| GossipSettings {
            listen,
            join: s.join.clone().unwrap_or_default(),
            key: s.gossip_key.clone(),
        });
        anyhow::ensure!(
            gossip.is_some() || !backends.is_empty(),
            "nothing to proxy to: give --gossip-listen (and --join) or --backends"
        );
        anyhow::ensure!(
            gossip.is_some() || s.join.as_ref().is_none_or(Vec::is_empty),
            "--join needs --gossip-listen"
        );
        let max_connect_size = s.max_connect_size.unwrap_or(DEFAULT_MAX_CONNECT_SIZE);
        within("max-connect-size", max_connect_size, 16, u64::MAX)?;
        let ws_max_message_size = s.ws_max_message_size.unwrap_or(DEFAULT_WS_MAX_MESSAGE_SIZE);
        within("ws-max-message-size", ws_max_message_size, 16, u64::MAX)?;
        let dial_timeout_ms = s.dial_timeout_ms.unwrap_or(1000);
        within("dial-timeout-ms", dial_timeout_ms, 1, u64::MAX)?;
        let connect_timeout = s.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS);
        within(
            "connect-timeout",
            connect_timeout,
            1,
            MAX_CONNECT_TIMEOUT_SECS,
        )?;
        let admission = AdmissionLimits {
            max_connections: s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_ip: s
                .max_connections_per_ip
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
            max_connection_rate: s.max_connection_rate.unwrap_or(DEFAULT_MAX_CONNECTION_RATE),
        };
        within("max-connections", admission.max_connections, 1, u64::MAX)?;
        within(
            "max-connections-per-ip",
            admission.max_connections_per_ip,
            1,
            u64::MAX,
        )?;
        within(
            "max-connection-rate",
            admission.max_connection_rate,
            1,
            u64::MAX,
        )?;
        let threads = s.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        within("threads", threads, 1, u64::MAX)?;
        Ok(ProxyConfig {
            listen: s
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1883))),
            tls,
            ws_listen: s.ws_listen,
            wss,
            metrics_listen: s.metrics_listen,
            node_id: s.node_id.unwrap_or_else(default_node_id),
            gossip,
            backends,
            balance: s.balance.unwrap_or_default(),
            connection: ConnectionOptions {
                connect_timeout: Duration::from_secs(connect_timeout),
                max_connect_size,
                dial_timeout: Duration::from_millis(dial_timeout_ms),
                proxy_protocol: s.proxy_protocol.unwrap_or(false),
                ws_limits: WsLimits {
                    max_message_size: ws_max_message_size,
                },
            },
            admission,
            threads,
        })
    }
}

/// Refuses `value` of `setting` unless it lies in `min..=max` (`max` of
/// `u64::MAX`: no upper bound), naming the setting (the flag and TOML key)
/// in the message; `main` exits with code 2 on it. As the node's checks.
fn within(setting: &str, value: impl TryInto<u64>, min: u64, max: u64) -> anyhow::Result<()> {
    let value: u64 = value.try_into().unwrap_or(u64::MAX);
    if (min..=max).contains(&value) {
        return Ok(());
    }
    if max == u64::MAX {
        anyhow::bail!("{setting}: {value} is too small; it must be at least {min}")
    }
    anyhow::bail!("{setting}: {value} is out of range; it must be between {min} and {max}")
}

/// A listener inside TLS: its address and certificates.
type TlsListen = Option<(SocketAddr, Arc<ServerTls>)>;

/// Loads the TLS files when `--tls-listen` or `--wss-listen` is given (one
/// configuration for both, reloaded once), naming the setting and the
/// file of any that cannot be used (exit code 2); refuses TLS files
/// without either listener and either listener without them.
fn tls(s: &Settings) -> anyhow::Result<(TlsListen, TlsListen)> {
    let listener = match (s.tls_listen, s.wss_listen) {
        (Some(_), _) => "--tls-listen",
        (None, Some(_)) => "--wss-listen",
        (None, None) => {
            for (setting, given) in [
                ("tls-cert", s.tls_cert.is_some()),
                ("tls-key", s.tls_key.is_some()),
                ("tls-client-ca", s.tls_client_ca.is_some()),
            ] {
                anyhow::ensure!(
                    !given,
                    "{setting}: given without --tls-listen or --wss-listen"
                );
            }
            return Ok((None, None));
        }
    };
    let (Some(cert), Some(key)) = (s.tls_cert.clone(), s.tls_key.clone()) else {
        let missing = if s.tls_cert.is_none() {
            "tls-cert"
        } else {
            "tls-key"
        };
        anyhow::bail!("{missing}: required with {listener}");
    };
    let files = TlsFiles {
        cert,
        key,
        client_ca: s.tls_client_ca.clone(),
    };
    let tls = Arc::new(ServerTls::load(files)?);
    let with = |listen: Option<SocketAddr>| listen.map(|listen| (listen, tls.clone()));
    Ok((with(s.tls_listen), with(s.wss_listen)))
}

/// A name unique per host and process, so two proxies on one machine (or
/// in two containers) never collide: `proxy-<hostname>-<pid>`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("proxy-{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests;
