//! Bounds-checked validation of one 3.1/3.1.1 packet's body before the
//! codec decodes it.
//!
//! `rmqtt-codec` is bounds checked itself (it replaced mqttrs, which was
//! not), so this walk is no longer what keeps the node from panicking; it
//! stays for the MQTT 3.1.1 rules the codec does not enforce, each with a
//! test below:
//!
//! - SUBSCRIBE option bytes with reserved bits set (the codec masks them
//!   off and accepts `0x04`, MQTT-3.8.3-4);
//! - U+0000 in any string (MQTT-1.5.3-2);
//! - DUP set on a QoS 0 PUBLISH (MQTT-3.3.1-2);
//! - bytes after PINGREQ or DISCONNECT (the codec ignores them).
//!
//! What the codec provably checks as well (packet id 0, truncated fields,
//! an empty SUBSCRIBE or UNSUBSCRIBE, invalid UTF-8, reserved fixed-header
//! flags, QoS 3) is still checked here, as the walk reads those fields
//! anyway; a test in `codec` shows the codec refusing each on its own.
//! CONNECT is not checked here: the rule set shared with the proxy
//! ([`astramq_shared::mqtt_connect`]) checks it.

use super::ProtocolError;

/// The packet types of the fixed header's high nibble.
pub mod packet_type {
    /// Client request to connect.
    pub const CONNECT: u8 = 1;
    /// Connect acknowledgement (server to client only).
    pub const CONNACK: u8 = 2;
    /// Application message.
    pub const PUBLISH: u8 = 3;
    /// QoS 1 acknowledgement.
    pub const PUBACK: u8 = 4;
    /// QoS 2, step 1.
    pub const PUBREC: u8 = 5;
    /// QoS 2, step 2.
    pub const PUBREL: u8 = 6;
    /// QoS 2, step 3.
    pub const PUBCOMP: u8 = 7;
    /// Subscribe request.
    pub const SUBSCRIBE: u8 = 8;
    /// Subscribe acknowledgement (server to client only).
    pub const SUBACK: u8 = 9;
    /// Unsubscribe request.
    pub const UNSUBSCRIBE: u8 = 10;
    /// Unsubscribe acknowledgement (server to client only).
    pub const UNSUBACK: u8 = 11;
    /// Keep-alive ping.
    pub const PINGREQ: u8 = 12;
    /// Ping answer (server to client only).
    pub const PINGRESP: u8 = 13;
    /// Clean disconnect.
    pub const DISCONNECT: u8 = 14;
}

/// A cursor that never reads past its slice.
struct Fields<'a> {
    packet: &'static str,
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn malformed(&self, reason: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            packet: self.packet,
            reason,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn packet_id(&mut self) -> Result<u16, ProtocolError> {
        match self.u16("missing packet identifier")? {
            0 => Err(self.malformed("packet identifier 0")),
            id => Ok(id),
        }
    }

    fn binary(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn string(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        let raw = self.binary(what)?;
        let text = std::str::from_utf8(raw).map_err(|_| self.malformed("invalid UTF-8 string"))?;
        if text.contains('\0') {
            return Err(self.malformed("U+0000 in a string"));
        }
        Ok(text)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn expect_end(&self) -> Result<(), ProtocolError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("unexpected bytes after the last field"))
        }
    }
}

/// Checks one packet: `first_byte` of its fixed header and its `body`
/// (exactly the remaining-length bytes).
pub fn check(first_byte: u8, body: &[u8]) -> Result<(), ProtocolError> {
    let flags = first_byte & 0x0F;
    let packet_kind = first_byte >> 4;
    let packet = packet_name(packet_kind);
    let mut fields = Fields { packet, buf: body };
    let required_flags = match packet_kind {
        packet_type::PUBLISH => return check_publish(flags, fields),
        packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != required_flags {
        return Err(fields.malformed("reserved fixed-header flags"));
    }
    match packet_kind {
        // The shared CONNECT rules (astramq_shared::mqtt_connect) apply.
        packet_type::CONNECT => Ok(()),
        packet_type::PUBACK | packet_type::PUBREC | packet_type::PUBREL | packet_type::PUBCOMP => {
            fields.packet_id()?;
            fields.expect_end()
        }
        packet_type::SUBSCRIBE => check_subscribe(fields),
        packet_type::UNSUBSCRIBE => {
            fields.packet_id()?;
            if fields.is_empty() {
                return Err(fields.malformed("no topic filter"));
            }
            while !fields.is_empty() {
                fields.string("truncated topic filter")?;
            }
            Ok(())
        }
        packet_type::PINGREQ | packet_type::DISCONNECT => fields.expect_end(),
        packet_type::CONNACK
        | packet_type::SUBACK
        | packet_type::UNSUBACK
        | packet_type::PINGRESP => {
            Err(fields.malformed("a server-to-client packet sent by a client"))
        }
        _ => {
            fields.buf = &[];
            Err(fields.malformed("reserved packet type"))
        }
    }
}

/// The fixed-header flag rules alone (MQTT-2.2.2-2): PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE carry `0010`, PUBLISH any but QoS 3, every other type
/// `0000`. Used for 5.0 packets, whose bodies the 5.0 codec checks.
pub fn check_fixed_header_flags(first_byte: u8) -> Result<(), ProtocolError> {
    let flags = first_byte & 0x0F;
    let kind = first_byte >> 4;
    let fine = match kind {
        packet_type::PUBLISH => (flags >> 1) & 0b11 != 3,
        packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => flags == 0b0010,
        _ => flags == 0,
    };
    if fine {
        Ok(())
    } else {
        Err(ProtocolError::Malformed {
            packet: packet_name(kind),
            reason: "reserved fixed-header flags",
        })
    }
}

/// The packet type's name, for errors and logs.
pub fn packet_name(kind: u8) -> &'static str {
    match kind {
        packet_type::CONNECT => "CONNECT",
        packet_type::CONNACK => "CONNACK",
        packet_type::PUBLISH => "PUBLISH",
        packet_type::PUBACK => "PUBACK",
        packet_type::PUBREC => "PUBREC",
        packet_type::PUBREL => "PUBREL",
        packet_type::PUBCOMP => "PUBCOMP",
        packet_type::SUBSCRIBE => "SUBSCRIBE",
        packet_type::SUBACK => "SUBACK",
        packet_type::UNSUBSCRIBE => "UNSUBSCRIBE",
        packet_type::UNSUBACK => "UNSUBACK",
        packet_type::PINGREQ => "PINGREQ",
        packet_type::PINGRESP => "PINGRESP",
        packet_type::DISCONNECT => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved",
    }
}

fn check_publish(flags: u8, mut fields: Fields<'_>) -> Result<(), ProtocolError> {
    let qos = (flags >> 1) & 0b11;
    if qos == 3 {
        return Err(fields.malformed("QoS 3"));
    }
    if qos == 0 && flags & 0b1000 != 0 {
        return Err(fields.malformed("DUP set on a QoS 0 message"));
    }
    fields.string("topic name runs past the packet")?;
    if qos > 0 {
        fields.packet_id()?;
    }
    Ok(())
}

fn check_subscribe(mut fields: Fields<'_>) -> Result<(), ProtocolError> {
    fields.packet_id()?;
    if fields.is_empty() {
        return Err(fields.malformed("no topic filter"));
    }
    while !fields.is_empty() {
        fields.string("truncated topic filter")?;
        let options = fields.u8("topic filter without its QoS byte")?;
        if options > 2 {
            return Err(fields.malformed("requested QoS above 2 or reserved bits set"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(packet: &[u8]) -> (u8, &[u8]) {
        let header = crate::protocol::frame::parse_header(packet, usize::MAX)
            .unwrap()
            .unwrap();
        (packet[0], &packet[header.header_len..header.packet_len()])
    }

    fn rejects(packet: &[u8]) {
        let (first, body) = body_of(packet);
        assert!(check(first, body).is_err(), "accepted {packet:02X?}");
    }

    /// mqttrs panicked on these; the PUBLISH and SUBSCRIBE are refused
    /// here (the CONNECTs by the shared rules, tested in `codec`).
    #[test]
    fn inputs_that_panicked_mqttrs_are_rejected() {
        rejects(&[
            0x30, 0x02, 0x00, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65, 0xC0, 0x00,
        ]);
        rejects(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 0x61]);
    }

    /// One case per rule the codec does not enforce (see the module doc).
    #[test]
    fn rules_the_codec_skips_are_enforced() {
        // SUBSCRIBE option byte with a reserved bit.
        rejects(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04]);
        // U+0000 in a PUBLISH topic and in a filter.
        rejects(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00]);
        rejects(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x02, b'a', 0x00, 0x01]);
        rejects(&[0xA2, 0x06, 0x00, 0x01, 0x00, 0x02, b'a', 0x00]);
        // PUBLISH QoS 0 with DUP.
        rejects(&[0x38, 0x03, 0x00, 0x01, b't']);
        // Bytes after PINGREQ and DISCONNECT.
        rejects(&[0xC0, 0x01, 0x00]);
        rejects(&[0xE0, 0x01, 0x00]);
    }

    /// Rules the codec checks too (tested against the codec in `codec`).
    #[test]
    fn rules_both_check_are_enforced() {
        // SUBSCRIBE with no filters.
        rejects(&[0x82, 0x02, 0x00, 0x01]);
        // Invalid UTF-8 topic.
        rejects(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28]);
        // Client-bound packet from a client.
        rejects(&[0xD0, 0x00]);
        // Packet id 0.
        rejects(&[0x40, 0x02, 0x00, 0x00]);
        // Reserved flags on PUBACK.
        rejects(&[0x41, 0x02, 0x00, 0x01]);
    }

    #[test]
    fn fixed_header_flags_alone() {
        for ok in [0x30, 0x3D, 0x62, 0x82, 0xA2, 0xC0, 0xE0, 0xF0, 0x40] {
            assert_eq!(check_fixed_header_flags(ok), Ok(()), "{ok:#04x}");
        }
        for bad in [0x36, 0x60, 0x80, 0xA0, 0xC1, 0xE2, 0xF1, 0x41] {
            assert!(check_fixed_header_flags(bad).is_err(), "{bad:#04x}");
        }
    }

    #[test]
    fn well_formed_packets_pass() {
        let ok = [
            vec![0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'],
            vec![0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x07],
            vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01],
            vec![0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
            vec![0x62, 0x02, 0x00, 0x01],
            vec![0xC0, 0x00],
            vec![0xE0, 0x00],
        ];
        for packet in ok {
            let (first, body) = body_of(&packet);
            assert_eq!(check(first, body), Ok(()), "rejected {packet:02X?}");
        }
    }
}
