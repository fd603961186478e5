//! The Redis data model, in one place: the key layout ([`keys`]), the binary
//! records ([`wire`]), reading replies ([`value`]), the Lua scripts
//! ([`scripts`]), the commands several tasks put in their pipelines
//! ([`queue`], [`inbox`]), the Redis metrics ([`metrics`]), and where and
//! how to reach the server — URL, credentials, TLS ([`endpoint`]).
//!
//! Both the store (sessions, retained messages) and the cluster (inboxes,
//! routes, liveness, recovery) use it; it uses neither, so the two never
//! import each other. What it guarantees: every script touches the keys of
//! one session or one node (one hash tag), so it runs on Redis Cluster too;
//! every record read back is bounds-checked (data in Redis is not trusted
//! more than a client).

pub mod endpoint;
pub mod inbox;
pub mod keys;
pub mod metrics;
pub mod queue;
pub mod scripts;
pub mod value;
pub mod wire;
