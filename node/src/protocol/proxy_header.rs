//! The PROXY protocol v2 header a load balancer puts in front of a client's
//! bytes, read only from `--trusted-proxies` (`Connection::read_proxy_header`).
//! The parser lives in [`astramq_shared::proxy_v2`], beside the writer the
//! proxy uses, so both ends share one definition of the format.

pub use astramq_shared::proxy_v2::{parse, ProxyHeader, ProxyHeaderError, SIGNATURE};
