//! Packets as the broker uses them, decoded from and encoded to the wire
//! with mqttrs.

use bytes::{Bytes, BytesMut};
use mqttrs::{
    Connack, ConnectReturnCode, Packet, Pid, Publish, QosPid, Suback, SubscribeReturnCodes,
};

use super::frame::FrameHeader;
use super::wire_check;
use super::ProtocolError;
use crate::message::Qos;

/// A packet a client may send, owned and ready for the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The first packet of every connection.
    Connect(ConnectPacket),
    /// An application message from the client.
    Publish(PublishPacket),
    /// QoS 1 acknowledgement of an outgoing message.
    Puback(u16),
    /// QoS 2 step 1 for an outgoing message.
    Pubrec(u16),
    /// QoS 2 step 2 for an incoming message.
    Pubrel(u16),
    /// QoS 2 step 3 for an outgoing message.
    Pubcomp(u16),
    /// New subscriptions: (filter, requested QoS).
    Subscribe {
        /// Echoed in the SUBACK.
        packet_id: u16,
        /// Filters with their requested QoS, in order.
        filters: Vec<(String, Qos)>,
    },
    /// Subscriptions to remove.
    Unsubscribe {
        /// Echoed in the UNSUBACK.
        packet_id: u16,
        /// Filters to remove.
        filters: Vec<String>,
    },
    /// Keep-alive probe.
    Pingreq,
    /// Clean end of the connection: no will.
    Disconnect,
}

/// The CONNECT fields the broker acts on. Its `Debug` shows whether a
/// password is present, never the password.
#[derive(Clone, PartialEq)]
pub struct ConnectPacket {
    /// 4 for MQTT 3.1.1, 3 for MQTT 3.1.
    pub protocol_level: u8,
    /// Client identifier; may be empty.
    pub client_id: String,
    /// Start fresh and forget the session on disconnect.
    pub clean_session: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// The message to publish if the client goes away uncleanly.
    pub will: Option<WillPacket>,
    /// The user name, checked by [`crate::auth`].
    pub username: Option<String>,
    /// The password (binary in MQTT), checked by [`crate::auth`]; never
    /// logged.
    pub password: Option<Bytes>,
}

impl std::fmt::Debug for ConnectPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectPacket")
            .field("protocol_level", &self.protocol_level)
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A CONNECT's last will.
#[derive(Debug, Clone, PartialEq)]
pub struct WillPacket {
    /// Where the will is published.
    pub topic: String,
    /// The will payload.
    pub payload: Bytes,
    /// The will's QoS.
    pub qos: Qos,
    /// Whether the will is retained.
    pub retain: bool,
}

/// An incoming PUBLISH; topic and payload share the frame's buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishPacket {
    /// A re-delivery of an earlier attempt.
    pub dup: bool,
    /// The publisher's QoS.
    pub qos: Qos,
    /// Present for QoS 1 and 2.
    pub packet_id: Option<u16>,
    /// Retain flag as published.
    pub retain: bool,
    /// Topic name (not yet checked for wildcards).
    pub topic: String,
    /// Payload, a slice of the frame.
    pub payload: Bytes,
}

/// Decodes one complete packet (`frame` holds exactly its bytes).
pub fn decode(header: &FrameHeader, frame: &Bytes) -> Result<Inbound, ProtocolError> {
    wire_check::check(header.first_byte, &frame[header.header_len..])?;
    let packet = match mqttrs::decode_slice(frame) {
        Ok(Some(packet)) => packet,
        Ok(None) => return Err(malformed("incomplete packet")),
        Err(mqttrs::Error::InvalidProtocol(name, level)) => {
            return Err(ProtocolError::UnsupportedProtocol { name, level })
        }
        Err(_) => return Err(malformed("rejected by the codec")),
    };
    Ok(match packet {
        Packet::Connect(c) => Inbound::Connect(ConnectPacket {
            protocol_level: match c.protocol {
                mqttrs::Protocol::MQTT311 => 4,
                mqttrs::Protocol::MQIsdp => 3,
            },
            client_id: c.client_id.to_owned(),
            clean_session: c.clean_session,
            keep_alive: c.keep_alive,
            will: c.last_will.map(|w| WillPacket {
                topic: w.topic.to_owned(),
                payload: frame.slice_ref(w.message),
                qos: qos_from(w.qos),
                retain: w.retain,
            }),
            username: c.username.map(str::to_owned),
            password: c.password.map(|p| frame.slice_ref(p)),
        }),
        Packet::Publish(p) => Inbound::Publish(PublishPacket {
            dup: p.dup,
            qos: qos_from(p.qospid.qos()),
            packet_id: p.qospid.pid().map(Pid::get),
            retain: p.retain,
            topic: p.topic_name.to_owned(),
            payload: frame.slice_ref(p.payload),
        }),
        Packet::Puback(pid) => Inbound::Puback(pid.get()),
        Packet::Pubrec(pid) => Inbound::Pubrec(pid.get()),
        Packet::Pubrel(pid) => Inbound::Pubrel(pid.get()),
        Packet::Pubcomp(pid) => Inbound::Pubcomp(pid.get()),
        Packet::Subscribe(s) => Inbound::Subscribe {
            packet_id: s.pid.get(),
            filters: s
                .topics
                .into_iter()
                .map(|t| (t.topic_path, qos_from(t.qos)))
                .collect(),
        },
        Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            packet_id: u.pid.get(),
            filters: u.topics,
        },
        Packet::Pingreq => Inbound::Pingreq,
        Packet::Disconnect => Inbound::Disconnect,
        Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::Pingresp => {
            return Err(malformed("server-to-client packet"))
        }
    })
}

fn malformed(reason: &'static str) -> ProtocolError {
    ProtocolError::Malformed {
        packet: "any",
        reason,
    }
}

fn qos_from(qos: mqttrs::QoS) -> Qos {
    match qos {
        mqttrs::QoS::AtMostOnce => Qos::AtMostOnce,
        mqttrs::QoS::AtLeastOnce => Qos::AtLeastOnce,
        mqttrs::QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}

/// CONNACK return codes of MQTT 3.1.1 (3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnackCode {
    /// Connection accepted.
    Accepted,
    /// The protocol level is not supported (0x01).
    UnacceptableProtocol,
    /// The client identifier is not allowed (0x02).
    IdentifierRejected,
    /// The broker cannot serve the client now (0x03).
    ServerUnavailable,
    /// Unknown user, wrong password, or a user name without one (0x04).
    BadUserNameOrPassword,
    /// No credentials while anonymous clients are refused (0x05).
    NotAuthorized,
}

/// Why encoding failed: only a packet the protocol cannot express
/// (a packet id of 0, a length over 256 MiB) does.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode packet: {0}")]
pub struct EncodeError(String);

/// Appends `packet` to `out`, growing it as needed.
fn encode(packet: &Packet<'_>, size_hint: usize, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    out.resize(start + size_hint, 0);
    match mqttrs::encode_slice(packet, &mut out[start..]) {
        Ok(written) => {
            out.truncate(start + written);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(EncodeError(e.to_string()))
        }
    }
}

/// Fixed header plus the longest remaining-length field.
const MAX_FIXED_HEADER: usize = 5;

fn pid(id: u16) -> Result<Pid, EncodeError> {
    Pid::try_from(id).map_err(|e| EncodeError(e.to_string()))
}

/// Appends a CONNACK.
pub fn encode_connack(out: &mut BytesMut, session_present: bool, code: ConnackCode) {
    let code = match code {
        ConnackCode::Accepted => ConnectReturnCode::Accepted,
        ConnackCode::UnacceptableProtocol => ConnectReturnCode::RefusedProtocolVersion,
        ConnackCode::IdentifierRejected => ConnectReturnCode::RefusedIdentifierRejected,
        ConnackCode::ServerUnavailable => ConnectReturnCode::ServerUnavailable,
        ConnackCode::BadUserNameOrPassword => ConnectReturnCode::BadUsernamePassword,
        ConnackCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
    };
    let packet = Packet::Connack(Connack {
        session_present,
        code,
    });
    // A CONNACK always fits: four bytes.
    let _ = encode(&packet, 4, out);
}

/// Appends a PUBLISH to a subscriber.
pub fn encode_publish(
    out: &mut BytesMut,
    topic: &str,
    payload: &[u8],
    qos: Qos,
    packet_id: Option<u16>,
    dup: bool,
    retain: bool,
) -> Result<(), EncodeError> {
    let qospid = match (qos, packet_id) {
        (Qos::AtMostOnce, _) => QosPid::AtMostOnce,
        (Qos::AtLeastOnce, Some(id)) => QosPid::AtLeastOnce(pid(id)?),
        (Qos::ExactlyOnce, Some(id)) => QosPid::ExactlyOnce(pid(id)?),
        (_, None) => return Err(EncodeError("QoS 1/2 PUBLISH without packet id".into())),
    };
    let packet = Packet::Publish(Publish {
        dup,
        qospid,
        retain,
        topic_name: topic,
        payload,
    });
    encode(
        &packet,
        MAX_FIXED_HEADER + 4 + topic.len() + payload.len(),
        out,
    )
}

/// The acknowledgements that carry only a packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// QoS 1 done.
    Puback,
    /// QoS 2 received.
    Pubrec,
    /// QoS 2 released.
    Pubrel,
    /// QoS 2 complete.
    Pubcomp,
    /// Unsubscribe done.
    Unsuback,
}

/// Appends an acknowledgement for `packet_id`.
pub fn encode_ack(out: &mut BytesMut, ack: Ack, packet_id: u16) -> Result<(), EncodeError> {
    let id = pid(packet_id)?;
    let packet = match ack {
        Ack::Puback => Packet::Puback(id),
        Ack::Pubrec => Packet::Pubrec(id),
        Ack::Pubrel => Packet::Pubrel(id),
        Ack::Pubcomp => Packet::Pubcomp(id),
        Ack::Unsuback => Packet::Unsuback(id),
    };
    encode(&packet, 4, out)
}

/// Appends a SUBACK; `granted` holds `Some(qos)` or `None` for 0x80.
pub fn encode_suback(
    out: &mut BytesMut,
    packet_id: u16,
    granted: &[Option<Qos>],
) -> Result<(), EncodeError> {
    let return_codes = granted
        .iter()
        .map(|g| match g {
            Some(Qos::AtMostOnce) => SubscribeReturnCodes::Success(mqttrs::QoS::AtMostOnce),
            Some(Qos::AtLeastOnce) => SubscribeReturnCodes::Success(mqttrs::QoS::AtLeastOnce),
            Some(Qos::ExactlyOnce) => SubscribeReturnCodes::Success(mqttrs::QoS::ExactlyOnce),
            None => SubscribeReturnCodes::Failure,
        })
        .collect();
    let packet = Packet::Suback(Suback {
        pid: pid(packet_id)?,
        return_codes,
    });
    encode(&packet, MAX_FIXED_HEADER + 2 + granted.len(), out)
}

/// Appends a PINGRESP.
pub fn encode_pingresp(out: &mut BytesMut) {
    // Two bytes, always fits.
    let _ = encode(&Packet::Pingresp, 2, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::parse_header;

    fn decode_bytes(raw: &[u8]) -> Result<Inbound, ProtocolError> {
        let frame = Bytes::copy_from_slice(raw);
        let header = parse_header(&frame, usize::MAX)?.expect("complete");
        decode(&header, &frame)
    }

    #[test]
    fn decodes_publish_sharing_the_frame() {
        let raw = [0x33, 0x07, 0x00, 0x01, b't', 0x00, 0x09, b'h', b'i'];
        let Inbound::Publish(p) = decode_bytes(&raw).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(p.qos, Qos::AtLeastOnce);
        assert!(p.retain);
        assert_eq!(p.packet_id, Some(9));
        assert_eq!(&p.payload[..], b"hi");
    }

    #[test]
    fn decodes_connect_with_will() {
        let raw = [
            0x10,
            0x17,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            0b0010_1110,
            0,
            30,
            0,
            1,
            b'c',
            0,
            1,
            b'w',
            0,
            3,
            b'b',
            b'y',
            b'e',
            0,
            0,
        ];
        // Trailing two bytes make the length wrong: must be refused.
        assert!(decode_bytes(&raw).is_err());
        let mut ok = raw[..23].to_vec();
        ok[1] = 0x15;
        let Inbound::Connect(c) = decode_bytes(&ok).unwrap() else {
            panic!("not a connect")
        };
        let will = c.will.unwrap();
        assert_eq!(will.topic, "w");
        assert_eq!(will.qos, Qos::AtLeastOnce);
        assert!(will.retain);
        assert_eq!(c.keep_alive, 30);
    }

    #[test]
    fn mqtt5_connect_is_unsupported_protocol() {
        let raw = [
            0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 0,
        ];
        assert!(matches!(
            decode_bytes(&raw),
            Err(ProtocolError::UnsupportedProtocol { level: 5, .. })
        ));
    }

    #[test]
    fn encoded_publish_decodes_back() {
        let mut out = BytesMut::new();
        encode_publish(
            &mut out,
            "a/b",
            b"payload",
            Qos::ExactlyOnce,
            Some(3),
            true,
            false,
        )
        .unwrap();
        let frame = out.freeze();
        let header = parse_header(&frame, usize::MAX).unwrap().unwrap();
        assert_eq!(header.packet_len(), frame.len());
        assert_eq!(frame[0], 0x3C);
    }

    #[test]
    fn suback_carries_failures() {
        let mut out = BytesMut::new();
        encode_suback(&mut out, 5, &[Some(Qos::AtLeastOnce), None]).unwrap();
        assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x05, 0x01, 0x80]);
    }
}
