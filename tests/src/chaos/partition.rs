//! [`NetnsLink`]: a network namespace joined to the host by a veth pair,
//! so one node can be cut off from Redis, its peers and the proxy.
//!
//! The partitionable node runs inside the namespace and reaches everything
//! through the host side of the pair (Redis and the other nodes' gossip
//! also listen on that address). Cutting the link takes the namespace side
//! down: the host keeps its own address, every packet to or from the node
//! is dropped, and existing TCP connections hang as they would behind a
//! failed switch. Healing brings it back up.
//!
//! Needs root and `ip` (iproute2). When the namespace cannot be created the
//! harness prints why and runs without the partition fault; it never fails
//! a run for that. Only the namespace this module creates is touched; its
//! guard deletes it (and with it the veth pair) on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

/// The namespace and the addresses on both ends of its link.
#[derive(Clone)]
pub struct NetnsLink {
    /// The namespace's name (`ip netns exec <name>`).
    pub name: String,
    /// The veth end inside the namespace.
    ns_if: String,
    /// `10.201.a.b`, the host end; the namespace end is the next address.
    host: Ipv4Addr,
    /// Deletes the namespace when the last clone is dropped.
    _guard: Arc<NetnsGuard>,
}

/// Deletes the namespace it names on drop.
struct NetnsGuard(String);

impl NetnsLink {
    /// Creates the namespace and link, or prints why not and returns `None`.
    pub fn create_or_explain() -> Option<Self> {
        match Self::create() {
            Ok(link) => Some(link),
            Err(e) => {
                println!(
                    "chaos: partition fault skipped: cannot create a network namespace: {e:#}"
                );
                None
            }
        }
    }

    fn create() -> Result<Self> {
        let pid = std::process::id();
        let name = format!("amq{pid}");
        let host_if = format!("amqh{pid}");
        let ns_if = format!("amqn{pid}");
        let subnet = (pid % 16_384) * 4;
        let host = Ipv4Addr::new(10, 201, (subnet >> 8) as u8, (subnet & 0xFF) as u8 + 1);
        ip(&["netns", "add", &name])?;
        let guard = Arc::new(NetnsGuard(name.clone()));
        let ns_ip = next(host);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_ns(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if])?;
        in_ns(&["link", "set", &ns_if, "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        Ok(Self {
            name,
            ns_if,
            host,
            _guard: guard,
        })
    }

    /// The host end's address: what the node inside dials, and where Redis
    /// and the other nodes' gossip listen for it.
    pub fn host_ip(&self) -> IpAddr {
        IpAddr::V4(self.host)
    }

    /// The namespace end's address: where the node inside listens.
    pub fn ns_ip(&self) -> IpAddr {
        IpAddr::V4(next(self.host))
    }

    /// Brings the namespace side of the link up (heal) or down (cut).
    pub fn set_up(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "link",
            "set",
            &self.ns_if,
            state,
        ])
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn next(addr: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) + 1)
}

/// Runs `ip args...`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
