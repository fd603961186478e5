//! What MQTT 5.0 adds to the packets the bench exchanges: property blocks.
//!
//! The bench sends empty property blocks (and a Session Expiry Interval for
//! persistent sessions) and skips every incoming block by its length, except
//! CONNACK's: the server's Receive Maximum, Maximum QoS and Server Keep
//! Alive bind the client, so they are read into [`ServerLimits`]. Every
//! other property the server may send is skipped by its type's width,
//! which 5.0 fixes per identifier (section 2.2.2.2).

use anyhow::{bail, ensure, Result};
use bytes::{BufMut, BytesMut};

use super::short;

/// CONNECT property: how long the session outlives the connection (u32 s).
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
/// CONNACK property: Server Keep Alive (u16 s), replaces the client's.
const SERVER_KEEP_ALIVE: u8 = 0x13;
/// CONNACK property: Receive Maximum (u16), QoS 1/2 publishes in flight.
const RECEIVE_MAXIMUM: u8 = 0x21;
/// CONNACK property: Maximum QoS (byte, 0 or 1; absent = 2).
const MAXIMUM_QOS: u8 = 0x24;

/// Session expiry a persistent 5.0 session asks for: long enough to outlive
/// any run, short enough that a long-lived broker forgets it eventually.
pub const PERSISTENT_SESSION_EXPIRY_S: u32 = 3600;

/// The limits a 5.0 CONNACK sets for the client; all `None` in 3.1.1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerLimits {
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub server_keep_alive: Option<u16>,
}

/// Appends a variable byte integer (the remaining length uses the same form).
pub fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Reads a variable byte integer at `at`; returns it and its width.
pub fn varint_at(body: &[u8], at: usize) -> Result<(usize, usize)> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = body.get(at + i) else {
            return Err(short("variable byte integer"));
        };
        value |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    bail!("variable byte integer longer than 4 bytes")
}

/// The CONNECT property block: empty, or a Session Expiry Interval when the
/// session should persist (in 5.0 a session ends with its connection
/// unless it asks for an expiry, whatever the Clean Start flag).
pub fn connect_properties(persistent: bool) -> &'static [u8] {
    const EXPIRY: [u8; 6] = {
        let s = PERSISTENT_SESSION_EXPIRY_S.to_be_bytes();
        [5, SESSION_EXPIRY_INTERVAL, s[0], s[1], s[2], s[3]]
    };
    if persistent {
        &EXPIRY
    } else {
        &[0]
    }
}

/// Skips the property block at `at`; returns the offset just after it.
pub fn skip_properties(body: &[u8], at: usize) -> Result<usize> {
    let (len, width) = varint_at(body, at)?;
    let end = at + width + len;
    ensure!(end <= body.len(), "property block past the packet's end");
    Ok(end)
}

/// Parses a CONNACK property block (the whole rest of the packet).
pub fn server_limits(block: &[u8]) -> Result<ServerLimits> {
    let (len, width) = varint_at(block, 0)?;
    let props = block
        .get(width..width + len)
        .ok_or_else(|| short("CONNACK properties"))?;
    let mut limits = ServerLimits::default();
    let mut at = 0;
    while at < props.len() {
        let id = props[at];
        at += 1;
        let value = props.get(at..).unwrap_or_default();
        let value_len = match id {
            RECEIVE_MAXIMUM | SERVER_KEEP_ALIVE => {
                let v = super::u16_at(props, at)?;
                if id == RECEIVE_MAXIMUM {
                    ensure!(v > 0, "CONNACK Receive Maximum 0");
                    limits.receive_maximum = Some(v);
                } else {
                    limits.server_keep_alive = Some(v);
                }
                2
            }
            MAXIMUM_QOS => {
                let v = *value.first().ok_or_else(|| short("Maximum QoS"))?;
                limits.maximum_qos = Some(v);
                1
            }
            _ => property_width(id, value)?,
        };
        at += value_len;
        ensure!(
            at <= props.len(),
            "CONNACK property 0x{id:02X} past the end"
        );
    }
    Ok(limits)
}

/// Width of the value of property `id` starting at `value[0]`.
fn property_width(id: u8, value: &[u8]) -> Result<usize> {
    let prefixed = |at: usize| -> Result<usize> { Ok(2 + super::u16_at(value, at)? as usize) };
    Ok(match id {
        // Byte.
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
        // Two-byte integer.
        0x13 | 0x21 | 0x22 | 0x23 => 2,
        // Four-byte integer.
        0x02 | 0x11 | 0x18 | 0x27 => 4,
        // Variable byte integer.
        0x0B => varint_at(value, 0)?.1,
        // UTF-8 string or binary data.
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => prefixed(0)?,
        // User property: a string pair.
        0x26 => {
            let key = prefixed(0)?;
            key + prefixed(key)?
        }
        other => bail!("unknown property 0x{other:02X}"),
    })
}

/// The name of a 5.0 reason code, for error messages (the ones a broker
/// under load may send; others read "see the 5.0 spec").
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0x00 => "normal disconnection",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x89 => "server busy",
        0x8B => "server shutting down",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x90 => "topic name invalid",
        0x93 => "receive maximum exceeded",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x9B => "QoS not supported",
        _ => "see the 5.0 spec",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        let widths = [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3)];
        let wider = [(2_097_151, 3), (2_097_152, 4), (268_435_455, 4)];
        for (value, width) in widths.into_iter().chain(wider) {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), width, "{value}");
            assert_eq!(varint_at(&buf, 0).unwrap(), (value, buf.len()));
        }
        assert!(varint_at(&[0x80, 0x80], 0).is_err());
        assert!(varint_at(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01], 0).is_err());
    }

    #[test]
    fn connack_limits_are_read_and_other_properties_skipped() {
        let block = [
            26, // property length
            0x22, 0x00, 0x0A, // Topic Alias Maximum 10 (skipped)
            0x21, 0x00, 0x20, // Receive Maximum 32
            0x26, 0x00, 0x01, b'k', 0x00, 0x02, b'v', b'v', // User Property (skipped)
            0x1F, 0x00, 0x02, b'o', b'k', // Reason String (skipped)
            0x24, 0x01, // Maximum QoS 1
            0x13, 0x00, 0x1E, // Server Keep Alive 30
            0x27, 0x00, // Maximum Packet Size, cut short
        ];
        assert!(server_limits(&block).is_err(), "a cut property is an error");
        let mut fixed = block.to_vec();
        fixed[0] = 24;
        fixed.truncate(25);
        assert_eq!(
            server_limits(&fixed).unwrap(),
            ServerLimits {
                receive_maximum: Some(32),
                maximum_qos: Some(1),
                server_keep_alive: Some(30),
            }
        );
        assert_eq!(server_limits(&[0]).unwrap(), ServerLimits::default());
        assert!(server_limits(&[2, 0x21, 0x00]).is_err());
        assert!(
            server_limits(&[3, 0x21, 0x00, 0x00]).is_err(),
            "Receive Maximum 0"
        );
        assert!(server_limits(&[1, 0x7F]).is_err(), "unknown property");
        assert!(
            server_limits(&[4, 0x01]).is_err(),
            "block longer than the packet"
        );
    }

    #[test]
    fn connect_properties_ask_for_an_expiry_only_when_persistent() {
        assert_eq!(connect_properties(false), &[0]);
        assert_eq!(connect_properties(true), &[5, 0x11, 0x00, 0x00, 0x0E, 0x10]);
    }
}
