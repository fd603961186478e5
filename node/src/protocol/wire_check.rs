//! Bounds-checked validation of one packet's body before mqttrs sees it.
//!
//! mqttrs indexes its input without checking lengths, so every field it will
//! read is walked here first: a packet that passes [`check`] is exactly the
//! shape mqttrs expects, with nothing missing and nothing left over. The
//! MQTT 3.1.1 rules mqttrs skips (reserved bits, a SUBSCRIBE with no
//! filters, U+0000 in strings, flag combinations) are enforced here too.

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
        packet_type::CONNECT => check_connect(fields),
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

fn packet_name(kind: u8) -> &'static str {
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
        _ => "reserved",
    }
}

/// CONNECT flag bits (MQTT-3.1.2.3).
mod connect_flag {
    pub const RESERVED: u8 = 0b0000_0001;
    pub const WILL: u8 = 0b0000_0100;
    pub const WILL_QOS: u8 = 0b0001_1000;
    pub const WILL_RETAIN: u8 = 0b0010_0000;
    pub const PASSWORD: u8 = 0b0100_0000;
    pub const USERNAME: u8 = 0b1000_0000;
}

fn check_connect(mut fields: Fields<'_>) -> Result<(), ProtocolError> {
    let name = fields.string("truncated protocol name")?;
    let level = fields.u8("missing protocol level")?;
    if !matches!((name, level), ("MQTT", 4) | ("MQIsdp", 3)) {
        return Err(ProtocolError::UnsupportedProtocol {
            name: name.to_owned(),
            level,
        });
    }
    let flags = fields.u8("missing connect flags")?;
    fields.u16("missing keep-alive")?;
    if flags & connect_flag::RESERVED != 0 {
        return Err(fields.malformed("reserved connect flag set"));
    }
    let will_qos = (flags & connect_flag::WILL_QOS) >> 3;
    if will_qos > 2 {
        return Err(fields.malformed("will QoS 3"));
    }
    let has_will = flags & connect_flag::WILL != 0;
    if !has_will && (will_qos != 0 || flags & connect_flag::WILL_RETAIN != 0) {
        return Err(fields.malformed("will QoS or retain without a will"));
    }
    if flags & connect_flag::PASSWORD != 0 && flags & connect_flag::USERNAME == 0 {
        return Err(fields.malformed("password without a user name"));
    }
    fields.string("truncated client identifier")?;
    if has_will {
        fields.string("truncated will topic")?;
        fields.binary("truncated will message")?;
    }
    if flags & connect_flag::USERNAME != 0 {
        fields.string("truncated user name")?;
    }
    if flags & connect_flag::PASSWORD != 0 {
        fields.binary("truncated password")?;
    }
    fields.expect_end()
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

    #[test]
    fn inputs_that_panic_mqttrs_are_rejected() {
        rejects(&[0x10, 0x06, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54]);
        rejects(&[0x10, 0x07, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04]);
        rejects(&[
            0x30, 0x02, 0x00, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65, 0xC0, 0x00,
        ]);
        rejects(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 0x61]);
    }

    #[test]
    fn rules_mqttrs_skips_are_enforced() {
        // SUBSCRIBE with no filters.
        rejects(&[0x82, 0x02, 0x00, 0x01]);
        // CONNECT with the reserved flag set.
        rejects(&[
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 0,
        ]);
        // Will QoS without a will.
        rejects(&[
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x0A, 0, 60, 0, 0,
        ]);
        // Password without a user name.
        rejects(&[
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 0,
        ]);
        // PUBLISH QoS 0 with DUP.
        rejects(&[0x38, 0x03, 0x00, 0x01, b't']);
        // Invalid UTF-8 topic.
        rejects(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28]);
        // Client-bound packet from a client.
        rejects(&[0xD0, 0x00]);
    }

    #[test]
    fn unsupported_protocol_level_is_told_apart() {
        let (first, body) = body_of(&[
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0,
        ]);
        assert!(matches!(
            check(first, body),
            Err(ProtocolError::UnsupportedProtocol { level: 5, .. })
        ));
    }

    #[test]
    fn well_formed_packets_pass() {
        let ok = [
            vec![
                0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
            ],
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
