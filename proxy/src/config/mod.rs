//! Proxy configuration: command-line flags, `ASTRAMQ_*` environment
//! variables and an optional TOML file, in that order of precedence, over
//! documented defaults — the same scheme as the node.
//!
//! The TOML file uses the long flag names as keys (`dial-timeout-ms = 500`,
//! `backends = ["10.0.0.1:1883"]`, `proxy-protocol = true`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use astramq_shared::config::Layered;
use clap::Parser;
use serde::Deserialize;

use crate::app::ConnectionOptions;
use crate::balance::Strategy;

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
    /// Threads of the client-traffic runtime.
    pub threads: usize,
}

impl ProxyConfig {
    /// Reads flags and environment, then the file they name, and resolves.
    pub fn load() -> anyhow::Result<ProxyConfig> {
        ProxyConfig::resolve(astramq_shared::config::load::<Settings>()?)
    }

    /// Applies defaults and checks values.
    pub fn resolve(s: Settings) -> anyhow::Result<ProxyConfig> {
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
        let max_connect_size = s.max_connect_size.unwrap_or(65_536);
        anyhow::ensure!(
            max_connect_size >= 16,
            "max-connect-size must be at least 16 bytes"
        );
        let dial_timeout_ms = s.dial_timeout_ms.unwrap_or(1000);
        anyhow::ensure!(dial_timeout_ms >= 1, "dial-timeout-ms must be at least 1");
        let connect_timeout = s.connect_timeout.unwrap_or(10);
        anyhow::ensure!(
            connect_timeout >= 1,
            "connect-timeout must be at least 1 second"
        );
        let threads = s.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        anyhow::ensure!(threads >= 1, "threads must be at least 1");
        Ok(ProxyConfig {
            listen: s
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1883))),
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
            },
            threads,
        })
    }
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
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Settings {
        Settings::try_parse_from(std::iter::once("astramq-proxy").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = ProxyConfig::resolve(flags(&["--backends", "127.0.0.1:1883"])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(c.balance, Strategy::RoundRobin);
        assert_eq!(c.connection.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.connection.dial_timeout, Duration::from_millis(1000));
        assert_eq!(c.connection.max_connect_size, 65_536);
        assert!(!c.connection.proxy_protocol);
        assert!(c.gossip.is_none());
        assert!(c.threads >= 1);
    }

    #[test]
    fn flags_override_the_file() {
        let file: Settings = toml::from_str(
            "backends = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nbalance = \"client-id\"\n\
             proxy-protocol = true\ndial-timeout-ms = 50\n",
        )
        .unwrap();
        let given = flags(&["--balance", "least-connections", "--proxy-protocol=false"]);
        let c = ProxyConfig::resolve(given.or(file)).unwrap();
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.balance, Strategy::LeastConnections);
        assert!(!c.connection.proxy_protocol);
        assert_eq!(c.connection.dial_timeout, Duration::from_millis(50));
    }

    #[test]
    fn a_bare_proxy_protocol_flag_turns_it_on() {
        let c = ProxyConfig::resolve(flags(&[
            "--backends",
            "127.0.0.1:1,127.0.0.1:2",
            "--proxy-protocol",
        ]))
        .unwrap();
        assert!(c.connection.proxy_protocol);
        assert_eq!(c.backends.len(), 2);
    }

    #[test]
    fn gossip_is_on_with_a_gossip_address() {
        let c = ProxyConfig::resolve(flags(&[
            "--gossip-listen",
            "127.0.0.1:7946",
            "--join",
            "127.0.0.1:7947,127.0.0.1:7948",
        ]))
        .unwrap();
        assert_eq!(c.gossip.unwrap().join.len(), 2);
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(
            ProxyConfig::resolve(Settings::default()).is_err(),
            "no backends at all"
        );
        assert!(ProxyConfig::resolve(flags(&[
            "--backends",
            "127.0.0.1:1",
            "--join",
            "127.0.0.1:2"
        ]))
        .is_err());
        assert!(ProxyConfig::resolve(flags(&[
            "--backends",
            "127.0.0.1:1",
            "--max-connect-size",
            "3"
        ]))
        .is_err());
        assert!(toml::from_str::<Settings>("lisen = \"x\"").is_err());
        assert!(Settings::try_parse_from(["astramq-proxy", "--balance", "random"]).is_err());
    }
}
