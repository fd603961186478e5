//! Node configuration: command-line flags, `ASTRAMQ_*` environment
//! variables and an optional TOML file, in that order of precedence, over
//! documented defaults.
//!
//! Flag names are an interface scripts and operators rely on: keep them.
//! The TOML file uses the same names as the long flags (`max-inflight = 64`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use astramq_shared::config::Layered;
use astramq_shared::tls::ServerTls;
use clap::Parser;
use serde::Deserialize;

use crate::acl::Rules;
use crate::auth::AuthOptions;
use crate::cluster::{ClusterOptions, Mode};
use crate::limits::keep_alive::KeepAlivePolicy;
use crate::limits::queue::QueueBound;
use crate::retained::RetainedLimits;
use crate::router::shared::Strategy;
use crate::router::topic::TopicLimits;

mod checks;

pub use checks::InvalidSetting;

/// Heartbeat period when none is configured.
const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 500;

/// Heartbeat age that makes a node dead when none is configured.
const DEFAULT_HEARTBEAT_TTL_MS: u64 = 2000;

/// Settings as given: every field optional so the three sources can be
/// layered. Clap reads flags and environment; serde reads the file.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "astramq-node",
    version,
    about = "AstraMQ broker node: MQTT 5.0 and 3.1.1 over TCP, TLS and WebSocket, alone or in a Redis-backed cluster.",
    after_help = "Users: `astramq-node user add|remove|list NAME [--password-file FILE | --redis URL]` (see `astramq-node user --help`)."
)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// TOML file with any of these settings (same names as the long flags).
    #[arg(long, env = "ASTRAMQ_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// MQTT over TCP listen address [default: 0.0.0.0:1883].
    #[arg(long, env = "ASTRAMQ_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// MQTT over TLS listen address, in addition to `--listen`; needs `--tls-cert` and `--tls-key` [default: off].
    #[arg(long, env = "ASTRAMQ_TLS_LISTEN", value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,

    /// MQTT over WebSocket listen address (path `/mqtt`, subprotocol `mqtt`), in addition to `--listen` [default: off].
    #[arg(long, env = "ASTRAMQ_WS_LISTEN", value_name = "ADDR")]
    pub ws_listen: Option<SocketAddr>,

    /// MQTT over WebSocket inside TLS listen address (path `/mqtt`, subprotocol `mqtt`); needs `--tls-cert` and `--tls-key` [default: off].
    #[arg(long, env = "ASTRAMQ_WSS_LISTEN", value_name = "ADDR")]
    pub wss_listen: Option<SocketAddr>,

    /// PEM certificate chain of the TLS listeners (`--tls-listen`, `--wss-listen`), leaf first; re-read on SIGHUP [default: none].
    #[arg(long, env = "ASTRAMQ_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`; re-read on SIGHUP [default: none].
    #[arg(long, env = "ASTRAMQ_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: TLS clients must present a certificate they signed, and its subject CN is the client's user name, let in without a password; re-read on SIGHUP [default: none, no client certificates].
    #[arg(long, env = "ASTRAMQ_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Prometheus metrics and health endpoint address [default: off].
    #[arg(long, env = "ASTRAMQ_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// This node's identity in the cluster [default: astramq-<random>].
    #[arg(long, env = "ASTRAMQ_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis URL of the shared cluster state: `redis://[user]:password@host:port/db`, or `rediss://...` for TLS [default: none, embedded in-memory store].
    #[arg(long, env = "ASTRAMQ_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// PEM CA certificates a `rediss://` server's certificate must chain to, instead of the system's roots [default: none, the system's roots].
    #[arg(long, env = "ASTRAMQ_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,

    /// PEM client certificate chain to present to a `rediss://` server (Redis `tls-auth-clients`); needs `--redis-key` [default: none].
    #[arg(long, env = "ASTRAMQ_REDIS_CERT", value_name = "FILE")]
    pub redis_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--redis-cert` [default: none].
    #[arg(long, env = "ASTRAMQ_REDIS_KEY", value_name = "FILE")]
    pub redis_key: Option<PathBuf>,

    /// How publishes cross nodes: `routed` (to the inboxes of subscribing nodes) or `broadcast` (one stream every node reads) [default: routed].
    #[arg(long, env = "ASTRAMQ_CLUSTER_MODE", value_enum)]
    pub cluster_mode: Option<Mode>,

    /// Bound on each Redis command and connection attempt, in milliseconds [default: 2000].
    #[arg(long, env = "ASTRAMQ_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,

    /// Bound of each node's inbox stream, in entries (each packs many publishes); a full inbox refuses appends and the publishes toward it are not acknowledged, nothing is evicted [default: 100000].
    #[arg(long, env = "ASTRAMQ_STREAM_MAXLEN")]
    pub stream_maxlen: Option<usize>,

    /// How long the forwarder waits for more publishes before writing a batch to Redis, in milliseconds; 0 sends each wave at once (lowest latency), 1 or more trades that much PUBACK and cross-node latency for fewer Redis round trips and less CPU [default: 0].
    #[arg(long, env = "ASTRAMQ_FORWARD_LINGER_MS")]
    pub forward_linger_ms: Option<u64>,

    /// Heartbeat period in milliseconds; dead nodes are looked for as often [default: 500].
    #[arg(long, env = "ASTRAMQ_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,

    /// A node whose heartbeat is older than this many milliseconds is dead [default: 2000].
    #[arg(long, env = "ASTRAMQ_HEARTBEAT_TTL_MS")]
    pub heartbeat_ttl_ms: Option<u64>,

    /// Gossip (membership) bind address, UDP and TCP on one port [default: off, no gossip].
    #[arg(long, env = "ASTRAMQ_GOSSIP_LISTEN")]
    pub gossip_listen: Option<SocketAddr>,

    /// Gossip seed addresses to join, comma separated [default: none].
    #[arg(long, env = "ASTRAMQ_JOIN", value_delimiter = ',')]
    #[serde(default)]
    pub join: Option<Vec<SocketAddr>>,

    /// Shared gossip encryption key, 16/24/32 bytes as base64 or hex [default: off, plaintext].
    #[arg(long, env = "ASTRAMQ_GOSSIP_KEY", hide_env_values = true)]
    pub gossip_key: Option<String>,

    /// Let clients without a user name connect (`true` or `false`); with `false` they get CONNACK 0x05 [default: false].
    #[arg(long, env = "ASTRAMQ_ALLOW_ANONYMOUS", value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,

    /// Users who may log in: `name:PHC-hash` lines (argon2id; see `astramq-node user add`), re-read on SIGHUP; checked before the users in Redis [default: none].
    #[arg(long, env = "ASTRAMQ_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Authorization rules (TOML `[[rule]]` tables: action, topic with `%u`/`%c`, optional user/client, permission; first match wins, then `default`, deny when absent), re-read on SIGHUP [default: none, everything allowed].
    #[arg(long, env = "ASTRAMQ_ACL_FILE", value_name = "FILE")]
    pub acl_file: Option<PathBuf>,

    /// Load balancers (IP addresses, comma separated) whose connections start with a PROXY protocol v2 header carrying the client's address [default: none].
    #[arg(long, env = "ASTRAMQ_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<std::net::IpAddr>>,

    /// Largest MQTT packet accepted, in bytes; larger ones close the connection [default: 1048576].
    #[arg(long, env = "ASTRAMQ_MAX_PACKET_SIZE")]
    pub max_packet_size: Option<usize>,

    /// Unacknowledged QoS 1/2 messages in flight to one client [default: 32].
    #[arg(long, env = "ASTRAMQ_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,

    /// Which member of a shared subscription's group (`$share/{group}/{filter}`) gets each message: `round-robin`, `random` or `sticky` (the same member while it is connected) [default: round-robin].
    #[arg(long, env = "ASTRAMQ_SHARED_SUBSCRIPTION_STRATEGY", value_enum)]
    pub shared_subscription_strategy: Option<Strategy>,

    /// Messages queued per session (offline, or waiting for the in-flight window); beyond it they are dropped and counted [default: 1000].
    #[arg(long, env = "ASTRAMQ_MAX_QUEUED_MESSAGES")]
    pub max_queued_messages: Option<usize>,

    /// Longest topic name or filter a client may use, in bytes; a longer SUBSCRIBE filter gets 0x80, a longer PUBLISH or will topic closes the connection [default: 65535].
    #[arg(long, env = "ASTRAMQ_MAX_TOPIC_LENGTH")]
    pub max_topic_length: Option<usize>,

    /// Most levels (`/`-separated parts) in a topic name or filter; a deeper SUBSCRIBE filter gets 0x80, a deeper PUBLISH or will topic closes the connection [default: 64].
    #[arg(long, env = "ASTRAMQ_MAX_TOPIC_LEVELS")]
    pub max_topic_levels: Option<usize>,

    /// Longest client id accepted, in bytes; a longer one gets CONNACK 0x02 [default: 256].
    #[arg(long, env = "ASTRAMQ_MAX_CLIENT_ID_LENGTH")]
    pub max_client_id_length: Option<usize>,

    /// Subscriptions one client may hold; a SUBSCRIBE filter beyond it gets 0x80 [default: 1000].
    #[arg(long, env = "ASTRAMQ_MAX_SUBSCRIPTIONS_PER_CLIENT")]
    pub max_subscriptions_per_client: Option<usize>,

    /// Topics with a retained message, cluster-wide; a retained PUBLISH to a new topic beyond it is delivered but not stored [default: 100000].
    #[arg(long, env = "ASTRAMQ_MAX_RETAINED_MESSAGES")]
    pub max_retained_messages: Option<usize>,

    /// Bytes of retained messages (topic plus stored message), cluster-wide; a retained PUBLISH to a new topic beyond it is delivered but not stored [default: 268435456].
    #[arg(long, env = "ASTRAMQ_MAX_RETAINED_BYTES")]
    pub max_retained_bytes: Option<u64>,

    /// Largest payload stored as a retained message, in bytes; a larger retained PUBLISH is delivered but not stored [default: 262144].
    #[arg(long, env = "ASTRAMQ_MAX_RETAINED_PAYLOAD")]
    pub max_retained_payload: Option<usize>,

    /// Largest will payload a CONNECT may carry, in bytes; a larger one closes the connection [default: 65536].
    #[arg(long, env = "ASTRAMQ_MAX_WILL_PAYLOAD")]
    pub max_will_payload: Option<usize>,

    /// Sessions this node holds (connected, and offline persistent ones it keeps); a CONNECT for a new session beyond it gets CONNACK 0x03 [default: 1000000].
    #[arg(long, env = "ASTRAMQ_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,

    /// Bytes (topic plus payload) queued for one session, wherever they wait: a connected session's deliveries not yet written, a persistent session's queue in Redis, and the embedded store's offline queue; a delivery that would pass it is dropped and counted (nothing queued is evicted) [default: 16777216].
    #[arg(long, env = "ASTRAMQ_MAX_QUEUED_BYTES_PER_SESSION")]
    pub max_queued_bytes_per_session: Option<usize>,

    /// Open connections from one IP address (trusted proxies are not counted); more are closed before CONNECT is read; 0 disables [default: 10000].
    #[arg(long, env = "ASTRAMQ_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

    /// New connections per second this node accepts (token bucket, bursts of as many); beyond it the node stops accepting and new connections wait in the listen backlog; 0 disables [default: 2000].
    #[arg(long, env = "ASTRAMQ_MAX_CONNECTION_RATE")]
    pub max_connection_rate: Option<u32>,

    /// Largest keep-alive honoured, in seconds; a client asking for more is closed after 1.5 times this much silence [default: 65535].
    #[arg(long, env = "ASTRAMQ_MAX_KEEP_ALIVE")]
    pub max_keep_alive: Option<u16>,

    /// Keep-alive, in seconds, for clients that ask for 0 (none), so silent half-open connections end; 0 keeps them forever [default: 3600].
    #[arg(long, env = "ASTRAMQ_DEFAULT_KEEP_ALIVE")]
    pub default_keep_alive: Option<u16>,

    /// Simultaneous client connections; more are refused at accept [default: 1000000].
    #[arg(long, env = "ASTRAMQ_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Seconds a new connection may take to send CONNECT [default: 10].
    #[arg(long, env = "ASTRAMQ_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<u64>,

    /// Seconds a write to a client may block before the client is dropped as too slow [default: 30].
    #[arg(long, env = "ASTRAMQ_WRITE_TIMEOUT")]
    pub write_timeout: Option<u64>,

    /// Seconds between `$SYS/broker/...` statistics publishes; 0 disables them [default: 10].
    #[arg(long, env = "ASTRAMQ_SYS_INTERVAL")]
    pub sys_interval: Option<u64>,

    /// Seconds to wait for clients to close on SIGTERM/SIGINT [default: 5].
    #[arg(long, env = "ASTRAMQ_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,

    /// Runtime worker threads [default: number of CPUs].
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
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_client_ca: self.tls_client_ca.or(lower.tls_client_ca),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            node_id: self.node_id.or(lower.node_id),
            redis: self.redis.or(lower.redis),
            redis_ca: self.redis_ca.or(lower.redis_ca),
            redis_cert: self.redis_cert.or(lower.redis_cert),
            redis_key: self.redis_key.or(lower.redis_key),
            gossip_listen: self.gossip_listen.or(lower.gossip_listen),
            join: self.join.or(lower.join),
            gossip_key: self.gossip_key.or(lower.gossip_key),
            trusted_proxies: self.trusted_proxies.or(lower.trusted_proxies),
            allow_anonymous: self.allow_anonymous.or(lower.allow_anonymous),
            password_file: self.password_file.or(lower.password_file),
            acl_file: self.acl_file.or(lower.acl_file),
            cluster_mode: self.cluster_mode.or(lower.cluster_mode),
            redis_timeout_ms: self.redis_timeout_ms.or(lower.redis_timeout_ms),
            stream_maxlen: self.stream_maxlen.or(lower.stream_maxlen),
            forward_linger_ms: self.forward_linger_ms.or(lower.forward_linger_ms),
            heartbeat_interval_ms: self.heartbeat_interval_ms.or(lower.heartbeat_interval_ms),
            heartbeat_ttl_ms: self.heartbeat_ttl_ms.or(lower.heartbeat_ttl_ms),
            max_packet_size: self.max_packet_size.or(lower.max_packet_size),
            max_inflight: self.max_inflight.or(lower.max_inflight),
            shared_subscription_strategy: self
                .shared_subscription_strategy
                .or(lower.shared_subscription_strategy),
            max_queued_messages: self.max_queued_messages.or(lower.max_queued_messages),
            max_topic_length: self.max_topic_length.or(lower.max_topic_length),
            max_topic_levels: self.max_topic_levels.or(lower.max_topic_levels),
            max_client_id_length: self.max_client_id_length.or(lower.max_client_id_length),
            max_subscriptions_per_client: self
                .max_subscriptions_per_client
                .or(lower.max_subscriptions_per_client),
            max_retained_messages: self.max_retained_messages.or(lower.max_retained_messages),
            max_retained_bytes: self.max_retained_bytes.or(lower.max_retained_bytes),
            max_retained_payload: self.max_retained_payload.or(lower.max_retained_payload),
            max_will_payload: self.max_will_payload.or(lower.max_will_payload),
            max_sessions: self.max_sessions.or(lower.max_sessions),
            max_queued_bytes_per_session: self
                .max_queued_bytes_per_session
                .or(lower.max_queued_bytes_per_session),
            max_connections_per_ip: self.max_connections_per_ip.or(lower.max_connections_per_ip),
            max_connection_rate: self.max_connection_rate.or(lower.max_connection_rate),
            max_keep_alive: self.max_keep_alive.or(lower.max_keep_alive),
            default_keep_alive: self.default_keep_alive.or(lower.default_keep_alive),
            max_connections: self.max_connections.or(lower.max_connections),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            write_timeout: self.write_timeout.or(lower.write_timeout),
            sys_interval: self.sys_interval.or(lower.sys_interval),
            shutdown_timeout: self.shutdown_timeout.or(lower.shutdown_timeout),
            threads: self.threads.or(lower.threads),
        }
    }
}

/// The resolved configuration the node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// MQTT listen address.
    pub listen: SocketAddr,
    /// The TLS listener, if enabled.
    pub tls: Option<TlsListen>,
    /// The WebSocket listener address, if enabled.
    pub ws_listen: Option<SocketAddr>,
    /// The WebSocket-inside-TLS listener, if enabled; its certificates are
    /// the same object as the TLS listener's.
    pub wss: Option<TlsListen>,
    /// Metrics endpoint address, if enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// This node's id.
    pub node_id: String,
    /// Cluster settings, when a Redis URL is given.
    pub cluster: Option<ClusterOptions>,
    /// Gossip settings, when a gossip address is given.
    pub gossip: Option<GossipOptions>,
    /// Limits that protect the node from clients.
    pub limits: Limits,
    /// Who may connect.
    pub auth: AuthOptions,
    /// What clients may publish and subscribe to; `None`: everything.
    pub acl: Option<AclOptions>,
    /// Seconds between `$SYS` publishes; `None` when disabled.
    pub sys_interval: Option<Duration>,
    /// How long shutdown waits for sessions to close.
    pub shutdown_timeout: Duration,
    /// Runtime worker threads; `None` for one per CPU.
    pub threads: Option<usize>,
}

/// The ACL file and its rules as read at start-up (a bad file refuses
/// start-up).
#[derive(Debug, Clone)]
pub struct AclOptions {
    /// The file, re-read on SIGHUP.
    pub path: PathBuf,
    /// Its rules.
    pub rules: Rules,
}

/// A listener inside TLS (`--tls-listen`, `--wss-listen`).
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// Where to bind.
    pub listen: SocketAddr,
    /// Its certificates, loaded (and checked) at start-up.
    pub tls: Arc<ServerTls>,
}

/// Gossip membership settings.
#[derive(Debug, Clone)]
pub struct GossipOptions {
    /// Where to bind (UDP and TCP).
    pub listen: SocketAddr,
    /// Seeds to join.
    pub join: Vec<SocketAddr>,
    /// Shared encryption key, if any.
    pub key: Option<String>,
}

/// Per-connection and per-session bounds, and who may vouch for a
/// client's address.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted.
    pub max_packet_size: usize,
    /// Outgoing QoS 1/2 window per client.
    pub max_inflight: usize,
    /// How a shared subscription's member is picked for each message.
    pub shared_strategy: Strategy,
    /// Queue bound per session.
    pub max_queued_messages: usize,
    /// Length and depth of topic names and filters.
    pub topics: TopicLimits,
    /// Longest client id (bytes).
    pub max_client_id_length: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions_per_client: usize,
    /// Retained messages kept (cluster-wide with Redis).
    pub retained: RetainedLimits,
    /// Largest payload stored as retained.
    pub max_retained_payload: usize,
    /// Largest will payload.
    pub max_will_payload: usize,
    /// Sessions held by this node.
    pub max_sessions: usize,
    /// Bytes (topic plus payload) queued per session: in its mailbox, its
    /// Redis queue or the embedded store's offline queue.
    pub max_queued_bytes_per_session: usize,
    /// Open connections per IP address; 0 for no limit.
    pub max_connections_per_ip: usize,
    /// New connections per second; 0 for no limit.
    pub max_connection_rate: u32,
    /// Keep-alive maximum and default.
    pub keep_alive: KeepAlivePolicy,
    /// Connection cap.
    pub max_connections: usize,
    /// Time allowed for the first CONNECT.
    pub connect_timeout: Duration,
    /// Time a single write may block.
    pub write_timeout: Duration,
    /// Peers whose connections start with a PROXY protocol v2 header.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Limits {
    /// The bound of each session's queues (Redis, embedded offline).
    pub fn queue_bound(&self) -> QueueBound {
        QueueBound {
            messages: self.max_queued_messages,
            bytes: self.max_queued_bytes_per_session,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            shared_strategy: Strategy::RoundRobin,
            max_queued_messages: 1000,
            topics: TopicLimits::default(),
            max_client_id_length: 256,
            max_subscriptions_per_client: 1000,
            retained: RetainedLimits::default(),
            max_retained_payload: 256 * 1024,
            max_will_payload: 64 * 1024,
            max_sessions: 1_000_000,
            max_queued_bytes_per_session: 16 * 1024 * 1024,
            max_connections_per_ip: 10_000,
            max_connection_rate: 2_000,
            keep_alive: KeepAlivePolicy::default(),
            max_connections: 1_000_000,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

impl NodeConfig {
    /// The TLS certificates of `--tls-listen` and `--wss-listen` (one
    /// configuration for both), for SIGHUP to reload.
    pub fn tls_certificates(&self) -> Option<Arc<ServerTls>> {
        self.tls
            .as_ref()
            .or(self.wss.as_ref())
            .map(|l| l.tls.clone())
    }

    /// Reads flags and environment, then the file they name, and resolves
    /// defaults.
    pub fn load() -> anyhow::Result<NodeConfig> {
        NodeConfig::resolve(astramq_shared::config::load::<Settings>()?)
    }

    /// Checks values ([`InvalidSetting`] names the first one that makes no
    /// sense) and applies defaults.
    pub fn resolve(s: Settings) -> anyhow::Result<NodeConfig> {
        checks::check(&s)?;
        let (tls, wss) = checks::tls(&s)?;
        let auth = AuthOptions {
            allow_anonymous: s.allow_anonymous.unwrap_or(false),
            users: checks::password_file(&s)?,
            password_file: s.password_file.clone(),
        };
        let acl = checks::acl_file(&s)?;
        let redis = checks::redis(&s)?;
        let defaults = Limits::default();
        let limits = Limits {
            max_packet_size: s.max_packet_size.unwrap_or(defaults.max_packet_size),
            max_inflight: s.max_inflight.unwrap_or(defaults.max_inflight),
            shared_strategy: s
                .shared_subscription_strategy
                .unwrap_or(defaults.shared_strategy),
            max_queued_messages: s
                .max_queued_messages
                .unwrap_or(defaults.max_queued_messages),
            topics: TopicLimits {
                max_length: s.max_topic_length.unwrap_or(defaults.topics.max_length),
                max_levels: s.max_topic_levels.unwrap_or(defaults.topics.max_levels),
            },
            max_client_id_length: s
                .max_client_id_length
                .unwrap_or(defaults.max_client_id_length),
            max_subscriptions_per_client: s
                .max_subscriptions_per_client
                .unwrap_or(defaults.max_subscriptions_per_client),
            retained: RetainedLimits {
                max_messages: s
                    .max_retained_messages
                    .unwrap_or(defaults.retained.max_messages),
                max_bytes: s.max_retained_bytes.unwrap_or(defaults.retained.max_bytes),
            },
            max_retained_payload: s
                .max_retained_payload
                .unwrap_or(defaults.max_retained_payload),
            max_will_payload: s.max_will_payload.unwrap_or(defaults.max_will_payload),
            max_sessions: s.max_sessions.unwrap_or(defaults.max_sessions),
            max_queued_bytes_per_session: s
                .max_queued_bytes_per_session
                .unwrap_or(defaults.max_queued_bytes_per_session),
            max_connections_per_ip: s
                .max_connections_per_ip
                .unwrap_or(defaults.max_connections_per_ip),
            max_connection_rate: s
                .max_connection_rate
                .unwrap_or(defaults.max_connection_rate),
            keep_alive: KeepAlivePolicy {
                max_secs: s.max_keep_alive.unwrap_or(defaults.keep_alive.max_secs),
                default_secs: s
                    .default_keep_alive
                    .unwrap_or(defaults.keep_alive.default_secs),
            },
            max_connections: s.max_connections.unwrap_or(defaults.max_connections),
            connect_timeout: s
                .connect_timeout
                .map_or(defaults.connect_timeout, Duration::from_secs),
            write_timeout: s
                .write_timeout
                .map_or(defaults.write_timeout, Duration::from_secs),
            trusted_proxies: s.trusted_proxies.clone().unwrap_or_default(),
        };
        Ok(NodeConfig {
            listen: s
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1883))),
            tls,
            ws_listen: s.ws_listen,
            wss,
            metrics_listen: s.metrics_listen,
            node_id: s.node_id.unwrap_or_else(random_node_id),
            cluster: redis.map(|redis| ClusterOptions {
                redis,
                mode: s.cluster_mode.unwrap_or(Mode::Routed),
                redis_timeout: Duration::from_millis(s.redis_timeout_ms.unwrap_or(2000)),
                stream_maxlen: s.stream_maxlen.unwrap_or(100_000),
                forward_linger: Duration::from_millis(s.forward_linger_ms.unwrap_or(0)),
                queue_bound: limits.queue_bound(),
                heartbeat_interval: Duration::from_millis(
                    s.heartbeat_interval_ms
                        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL_MS),
                ),
                heartbeat_ttl: Duration::from_millis(
                    s.heartbeat_ttl_ms.unwrap_or(DEFAULT_HEARTBEAT_TTL_MS),
                ),
                takeover_timeout: Duration::from_secs(5),
            }),
            gossip: s.gossip_listen.map(|listen| GossipOptions {
                listen,
                join: s.join.clone().unwrap_or_default(),
                key: s.gossip_key.clone(),
            }),
            limits,
            auth,
            acl,
            sys_interval: match s.sys_interval.unwrap_or(10) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            shutdown_timeout: Duration::from_secs(s.shutdown_timeout.unwrap_or(5)),
            threads: s.threads,
        })
    }
}

fn random_node_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "astramq-{:08x}",
        RandomState::new().hash_one(std::process::id()) as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_the_rest() {
        let file: Settings =
            toml::from_str("listen = \"127.0.0.1:1999\"\nmax-inflight = 7\n").unwrap();
        let flags = Settings::try_parse_from(["astramq-node", "--max-inflight", "9"]).unwrap();
        let config = NodeConfig::resolve(flags.or(file)).unwrap();
        assert_eq!(config.listen, "127.0.0.1:1999".parse().unwrap());
        assert_eq!(config.limits.max_inflight, 9);
        assert_eq!(config.limits.max_queued_messages, 1000);
        assert!(config.cluster.is_none());
    }

    #[test]
    fn anonymous_clients_are_refused_unless_allowed() {
        let config = NodeConfig::resolve(Settings::default()).unwrap();
        assert!(!config.auth.allow_anonymous);
        assert!(config.auth.password_file.is_none());
        let flags =
            Settings::try_parse_from(["astramq-node", "--allow-anonymous", "true"]).unwrap();
        assert!(NodeConfig::resolve(flags).unwrap().auth.allow_anonymous);
        let file: Settings = toml::from_str("allow-anonymous = true\n").unwrap();
        assert!(NodeConfig::resolve(file).unwrap().auth.allow_anonymous);
        assert!(Settings::try_parse_from(["astramq-node", "--allow-anonymous", "yes"]).is_err());
    }

    #[test]
    fn a_malformed_password_file_is_refused_with_its_line() {
        let path = std::env::temp_dir().join(format!("astramq-pw-{}", std::process::id()));
        std::fs::write(&path, "# users\nalice:not-a-hash\n").unwrap();
        let s = Settings {
            password_file: Some(path.clone()),
            ..Settings::default()
        };
        let error = NodeConfig::resolve(s).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(error.starts_with("password-file: "), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn an_invalid_acl_file_is_refused_and_a_valid_one_read() {
        let path = std::env::temp_dir().join(format!("astramq-acl-cfg-{}", std::process::id()));
        std::fs::write(&path, "[[rule]]\naction = \"read\"\n").unwrap();
        let flags =
            Settings::try_parse_from(["astramq-node", "--acl-file", path.to_str().unwrap()])
                .unwrap();
        let error = NodeConfig::resolve(flags.clone()).unwrap_err().to_string();
        assert!(error.starts_with("acl-file: "), "{error}");
        std::fs::write(
            &path,
            "[[rule]]\naction = \"subscribe\"\ntopic = \"t\"\npermission = \"deny\"\n",
        )
        .unwrap();
        let acl = NodeConfig::resolve(flags).unwrap().acl.expect("an ACL");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(acl.rules.len(), 1);
        assert!(NodeConfig::resolve(Settings::default())
            .unwrap()
            .acl
            .is_none());
        let file: Settings = toml::from_str("acl-file = \"/x\"\n").unwrap();
        assert_eq!(file.acl_file, Some(PathBuf::from("/x")));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<Settings>("lisen = \"x\"").is_err());
    }

    #[test]
    fn invalid_limits_are_refused() {
        let s = Settings {
            max_inflight: Some(0),
            ..Settings::default()
        };
        assert!(NodeConfig::resolve(s).is_err());
    }

    #[test]
    fn topic_and_identity_limits_are_read_and_defaulted() {
        let flags = Settings::try_parse_from([
            "astramq-node",
            "--max-topic-levels",
            "100000",
            "--max-subscriptions-per-client",
            "5",
        ])
        .unwrap();
        let limits = NodeConfig::resolve(flags).unwrap().limits;
        assert_eq!(limits.topics.max_levels, 100_000);
        assert_eq!(limits.topics.max_length, 65_535);
        assert_eq!(limits.max_subscriptions_per_client, 5);
        assert_eq!(limits.max_client_id_length, 256);
        let file: Settings = toml::from_str("max-client-id-length = 64\n").unwrap();
        assert_eq!(
            NodeConfig::resolve(file)
                .unwrap()
                .limits
                .max_client_id_length,
            64
        );
    }

    #[test]
    fn redis_tls_files_need_redis_and_a_rediss_url() {
        let file: Settings = toml::from_str("redis-ca = \"/ca.pem\"\n").unwrap();
        let error = NodeConfig::resolve(file).unwrap_err().to_string();
        assert_eq!(error, "redis-ca: given without --redis");
        let flags = Settings::try_parse_from([
            "astramq-node",
            "--redis",
            "redis://:pw@127.0.0.1:6379",
            "--redis-key",
            "/key.pem",
        ])
        .unwrap();
        let error = NodeConfig::resolve(flags).unwrap_err().to_string();
        assert!(
            error.starts_with("redis-key: needs a rediss:// URL"),
            "{error}"
        );
        let flags =
            Settings::try_parse_from(["astramq-node", "--redis", "rediss://127.0.0.1:6380"])
                .unwrap();
        let cluster = NodeConfig::resolve(flags)
            .unwrap()
            .cluster
            .expect("a cluster");
        assert!(cluster.redis.is_tls());
    }

    #[test]
    fn the_redis_url_is_not_shown_by_help() {
        use clap::CommandFactory;
        let command = Settings::command();
        let redis = command
            .get_arguments()
            .find(|a| a.get_id() == "redis")
            .expect("the --redis flag");
        assert!(redis.is_hide_env_values_set());
    }
}
