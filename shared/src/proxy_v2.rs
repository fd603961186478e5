//! The PROXY protocol version 2 header (HAProxy's binary format) that a
//! load balancer puts in front of a client's bytes, so a node learns the
//! client's real address: [`write_header`] is what `astramq-proxy
//! --proxy-protocol` sends, [`parse`] what `astramq-node` reads from its
//! `--trusted-proxies`.
//!
//! A node must accept the header only from trusted proxy addresses:
//! from anyone else the header is just malformed MQTT and the connection is
//! closed; otherwise any client could claim any address.
//! Specification: haproxy.org, "The PROXY protocol", section 2.2.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed 12-byte signature that starts every v2 header.
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
///
/// Only the fixed part is written (no TLVs): the signature, version 2 with
/// the PROXY command, TCP over IPv4 or IPv6, then source and destination
/// addresses and ports. When either address is unknown, a LOCAL header (no
/// addresses) is sent instead, which tells the node to use the
/// connection's own addresses.
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

/// Signature, version/command, family and length.
const FIXED_LEN: usize = 16;

/// Largest address block accepted (TLVs included); real headers are far
/// smaller, and a bound keeps a hostile "trusted" peer from making the
/// node buffer much.
const MAX_BLOCK: usize = 512;

/// Why a header from a trusted proxy was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// The bytes do not start with the v2 signature.
    #[error("expected a PROXY protocol v2 header")]
    Missing,
    /// Version other than 2, or an unknown command.
    #[error("unsupported PROXY protocol version or command {0:#04x}")]
    Unsupported(u8),
    /// The address block is too large or too short for its family.
    #[error("malformed PROXY protocol address block")]
    Malformed,
}

/// A complete header: its length on the wire and the client's address
/// (`None` for a LOCAL command or an unspecified family, e.g. health checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes to skip before the MQTT stream.
    pub len: usize,
    /// The original client address, if the proxy gave one.
    pub source: Option<SocketAddr>,
}

/// Parses a header at the start of `buf`; `Ok(None)` until it is complete.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    let prefix = buf.len().min(SIGNATURE.len());
    if buf[..prefix] != SIGNATURE[..prefix] {
        return Err(ProxyHeaderError::Missing);
    }
    if buf.len() < FIXED_LEN {
        return Ok(None);
    }
    let version_command = buf[12];
    let family = buf[13];
    let block_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version_command >> 4 != 2 || version_command & 0x0F > 1 {
        return Err(ProxyHeaderError::Unsupported(version_command));
    }
    if block_len > MAX_BLOCK {
        return Err(ProxyHeaderError::Malformed);
    }
    let Some(block) = buf.get(FIXED_LEN..FIXED_LEN + block_len) else {
        return Ok(None);
    };
    let len = FIXED_LEN + block_len;
    let is_local = version_command & 0x0F == 0;
    let source = if is_local {
        None
    } else {
        source_address(family, block)?
    };
    Ok(Some(ProxyHeader { len, source }))
}

fn source_address(family: u8, block: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match family >> 4 {
        // AF_INET: src addr (4), dst addr (4), src port, dst port.
        0x1 => {
            let b = block.get(..12).ok_or(ProxyHeaderError::Malformed)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Ok(Some(SocketAddr::from((
                ip,
                u16::from_be_bytes([b[8], b[9]]),
            ))))
        }
        // AF_INET6: src addr (16), dst addr (16), src port, dst port.
        0x2 => {
            let b = block.get(..36).ok_or(ProxyHeaderError::Malformed)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[32], b[33]]);
            Ok(Some(SocketAddr::from((Ipv6Addr::from(octets), port))))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header() -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        h.extend_from_slice(&[192, 0, 2, 7, 127, 0, 0, 1, 0x30, 0x39, 0x07, 0x5B]);
        h
    }

    #[test]
    fn parses_an_ipv4_header_and_waits_for_the_rest() {
        let h = v4_header();
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
        }
        let mut with_mqtt = h.clone();
        with_mqtt.extend_from_slice(&[0x10, 0x00]);
        let header = parse(&with_mqtt).unwrap().unwrap();
        assert_eq!(header.len, h.len());
        assert_eq!(header.source, Some("192.0.2.7:12345".parse().unwrap()));
    }

    #[test]
    fn local_command_has_no_source() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&h).unwrap().unwrap().source, None);
    }

    #[test]
    fn refuses_what_is_not_a_v2_header() {
        assert_eq!(parse(&[0x10, 0x0C]), Err(ProxyHeaderError::Missing));
        let mut v1 = SIGNATURE.to_vec();
        v1.extend_from_slice(&[0x11, 0x11, 0x00, 0x0C]);
        assert_eq!(parse(&v1), Err(ProxyHeaderError::Unsupported(0x11)));
        let mut huge = SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&huge), Err(ProxyHeaderError::Malformed));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0x00, 0x02, 1, 2]);
        assert_eq!(parse(&short), Err(ProxyHeaderError::Malformed));
    }

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

    #[test]
    fn what_the_proxy_writes_the_node_reads() {
        for (source, destination) in [
            ("10.1.2.3:50000", "127.0.0.1:1883"),
            ("[2001:db8::1]:4000", "[::1]:1883"),
        ] {
            let source: SocketAddr = source.parse().unwrap();
            let mut out = Vec::new();
            write_header(&mut out, Some(source), Some(destination.parse().unwrap()));
            let header = parse(&out).unwrap().unwrap();
            assert_eq!(header.len, out.len());
            assert_eq!(header.source, Some(source));
        }
        let mut local = Vec::new();
        write_header(&mut local, None, None);
        assert_eq!(parse(&local).unwrap().unwrap().source, None);
    }
}
