//! The PROXY protocol version 2 header (HAProxy's binary format), sent to a
//! node ahead of the client's bytes with `--proxy-protocol`, so the node
//! sees the client's real address instead of the proxy's.
//!
//! Only the fixed part is written (no TLVs): the 12-byte signature, version 2
//! with the PROXY command, TCP over IPv4 or IPv6, then source and
//! destination addresses and ports. Source is the client; destination is
//! the proxy address the client connected to. When either address is not an
//! IP socket address, a LOCAL header (no addresses) is sent instead, which
//! tells the node to use the connection's own addresses.
//!
//! A node must accept the header only from trusted proxy addresses (the
//! node's `--trusted-proxies`); otherwise any client could claim any address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The protocol signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Version 2 (high nibble), command PROXY (low nibble 1).
const V2_PROXY: u8 = 0x21;
/// Version 2, command LOCAL (low nibble 0).
const V2_LOCAL: u8 = 0x20;
/// Address family INET (high nibble 1), transport STREAM (low nibble 1).
const TCP_OVER_IPV4: u8 = 0x11;
/// Address family INET6 (high nibble 2), transport STREAM.
const TCP_OVER_IPV6: u8 = 0x21;
/// Family UNSPEC, protocol UNSPEC: used with LOCAL.
const UNSPEC: u8 = 0x00;

/// Appends the v2 header for a client at `source` that connected to the
/// proxy at `destination`. Mixed families are written as IPv6 (an IPv4
/// address becomes IPv4-mapped).
pub fn write_header(
    out: &mut Vec<u8>,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
) {
    out.extend_from_slice(&SIGNATURE);
    let (Some(src), Some(dst)) = (source, destination) else {
        out.extend_from_slice(&[V2_LOCAL, UNSPEC, 0, 0]);
        return;
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[V2_PROXY, TCP_OVER_IPV4, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.extend_from_slice(&[V2_PROXY, TCP_OVER_IPV6, 0, 36]);
            out.extend_from_slice(&as_v6(s).octets());
            out.extend_from_slice(&as_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_matches_the_specification_layout() {
        let mut out = Vec::new();
        write_header(
            &mut out,
            Some("10.1.2.3:50000".parse().unwrap()),
            Some("127.0.0.1:1883".parse().unwrap()),
        );
        let mut expected = SIGNATURE.to_vec();
        expected.extend([0x21, 0x11, 0x00, 0x0C]);
        expected.extend([10, 1, 2, 3, 127, 0, 0, 1]);
        expected.extend(50000u16.to_be_bytes());
        expected.extend(1883u16.to_be_bytes());
        assert_eq!(out, expected);
        assert_eq!(out.len(), 16 + 12);
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let mut out = Vec::new();
        write_header(
            &mut out,
            Some("[2001:db8::1]:4000".parse().unwrap()),
            Some("127.0.0.1:1883".parse().unwrap()),
        );
        assert_eq!(&out[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_eq!(out.len(), 16 + 36);
        let dst: [u8; 16] = out[32..48].try_into().unwrap();
        assert_eq!(
            Ipv6Addr::from(dst).to_ipv4_mapped(),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(&out[48..50], &4000u16.to_be_bytes());
    }

    #[test]
    fn unknown_addresses_give_a_local_header() {
        let mut out = Vec::new();
        write_header(&mut out, None, Some("127.0.0.1:1883".parse().unwrap()));
        assert_eq!(&out[12..], &[0x20, 0x00, 0x00, 0x00]);
    }
}
