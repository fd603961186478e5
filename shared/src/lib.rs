//! Code shared by the AstraMQ broker (`astramq-node`) and proxy (`astramq-proxy`).
//!
//! # Layout
//!
//! - [`membership`] — gossip membership (serf): who is alive, with each
//!   member's role and addresses, as a snapshot and a stream of events.
//! - [`config`] — flags, environment and TOML file, layered the same way
//!   for every binary.
//! - [`ops_http`] — the `/metrics`, `/healthz` and `/readyz` endpoint.
//! - [`metrics`] — registering and rendering Prometheus metrics, and the
//!   two metrics every binary exports: `astramq_build_info` and
//!   `astramq_membership_members`.
//! - [`tls`] — TLS listener configuration from PEM files (rustls),
//!   reloadable, and the client certificate's CN.
//! - [`ws`] — MQTT over WebSocket: the `/mqtt` upgrade and the byte stream
//!   carried in binary messages.
//! - [`varint`] — MQTT's variable byte integer (the remaining length), for
//!   the node's framing and the proxy's CONNECT reader.
//! - [`proxy_v2`] — the PROXY protocol v2 header: the proxy writes it, the
//!   node reads it.
//! - [`mqtt_connect`] — the one CONNECT rule set: what the proxy lets
//!   through is what a node accepts, refused with the same CONNACK code.
//! - [`log_text`] — client-supplied strings truncated and escaped for logs,
//!   and passwords redacted from URLs.

pub mod config;
pub mod log_text;
pub mod membership;
pub mod metrics;
pub mod mqtt_connect;
pub mod ops_http;
pub mod proxy_v2;
pub mod tls;
pub mod varint;
pub mod ws;
