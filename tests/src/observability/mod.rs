//! Harness for the observability and packaging tests: the local stack's
//! processes, a real Prometheus, the dashboards read as Grafana reads them.
//!
//! # Layout
//!
//! - [`cluster`]: [`cluster::Cluster`], Redis + three nodes + the proxy on
//!   free loopback ports, each with a metrics endpoint.
//! - [`prometheus`]: [`prometheus::PrometheusServer`], Debian's Prometheus
//!   configured from `compose/prometheus.yml.template`, and its HTTP API.
//! - [`dashboards`]: the JSON in `dashboards/`, its panels, queries and
//!   variables, and Grafana's variable substitution.
//! - [`exposition`]: parsing a `/metrics` page.
//! - [`http`]: a minimal HTTP/1.0 GET.

pub mod cluster;
pub mod dashboards;
pub mod exposition;
pub mod http;
pub mod prometheus;

pub use crate::binary::workspace_root;
