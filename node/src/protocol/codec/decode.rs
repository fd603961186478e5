//! One framed packet in, an [`Inbound`] out.
//!
//! [`crate::protocol::frame`] has already parsed the fixed header and
//! refused a packet over the configured maximum; the connection calls in
//! here only once the whole packet is in its read buffer. Then:
//!
//! 1. a CONNECT goes through the shared rule set
//!    ([`astramq_shared::mqtt_connect`], the proxy's too), which also picks
//!    the codec (3.1/3.1.1 or 5.0) from its protocol level;
//! 2. any other 3.1/3.1.1 packet is walked by [`wire_check`] for the rules
//!    `rmqtt-codec` does not enforce (reserved bits of SUBSCRIBE options,
//!    U+0000 in strings, DUP on QoS 0, bytes after PINGREQ/DISCONNECT);
//!    a 5.0 packet gets the fixed-header flag check here and its
//!    codec-skipped rules after decoding ([`check_v5`]);
//! 3. the codec splits exactly that packet off the read buffer (its
//!    fields are `Bytes` slices of it: no copy) and decodes it. It is
//!    given the packet's own size as its inbound limit: never 0 (which
//!    would mean unlimited), and never more than is already buffered, so
//!    it cannot reserve memory for a claimed length.

use bytes::BytesMut;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::Decoder;

use astramq_shared::mqtt_connect::{self, ConnectError};
use astramq_shared::varint;

use super::packets::*;
use crate::message::Qos;
use crate::protocol::frame::FrameHeader;
use crate::protocol::wire_check;
use crate::protocol::ProtocolError;

/// Decodes a connection's first packet, which must be a CONNECT. `buf`
/// starts with the packet described by `header` (all of it buffered); the
/// packet is removed from it. On error the connection must be closed.
pub fn decode_first(
    header: &FrameHeader,
    buf: &mut BytesMut,
) -> Result<Box<ConnectPacket>, ProtocolError> {
    if header.first_byte >> 4 != wire_check::packet_type::CONNECT {
        return Err(malformed("first", "the first packet must be CONNECT"));
    }
    match decode_any(None, header, buf)? {
        Inbound::Connect(connect) => Ok(connect),
        _ => Err(malformed("first", "the first packet must be CONNECT")),
    }
}

/// Decodes one packet of a connection that speaks `version`. `buf` starts
/// with the packet described by `header` (all of it buffered); the packet
/// is removed from it. On error the connection must be closed.
pub fn decode(
    version: Version,
    header: &FrameHeader,
    buf: &mut BytesMut,
) -> Result<Inbound, ProtocolError> {
    decode_any(Some(version), header, buf)
}

fn decode_any(
    version: Option<Version>,
    header: &FrameHeader,
    buf: &mut BytesMut,
) -> Result<Inbound, ProtocolError> {
    let packet_len = header.packet_len();
    let Some(body) = buf.get(header.header_len..packet_len) else {
        return Err(malformed("any", "incomplete packet"));
    };
    let is_connect = header.first_byte >> 4 == wire_check::packet_type::CONNECT;
    let version = if is_connect {
        connect_version(&buf[..packet_len])?
    } else {
        version.unwrap_or(Version::Mqtt311)
    };
    match version {
        Version::Mqtt5 => wire_check::check_fixed_header_flags(header.first_byte)?,
        Version::Mqtt31 | Version::Mqtt311 if !is_connect => {
            wire_check::check(header.first_byte, body)?
        }
        _ => wire_check::check_fixed_header_flags(header.first_byte)?,
    }
    if version == Version::Mqtt5 {
        // Before the codec, which would call these malformed (0x81). Most
        // packets have an empty property block: one byte looked at.
        if let Some(error) = v5_rejection(header.first_byte, body) {
            return Err(error);
        }
    }
    let limit = u32::try_from(packet_len).unwrap_or(u32::MAX).max(1);
    let decoded = match version {
        Version::Mqtt5 => v5::Codec::new(limit, 0)
            .decode(buf)
            .map(|p| p.map(|(packet, _)| from_v5(packet))),
        Version::Mqtt31 | Version::Mqtt311 => v3::Codec::new(limit)
            .decode(buf)
            .map(|p| p.map(|(packet, _)| from_v3(packet))),
    };
    match decoded {
        Ok(Some(inbound)) => inbound,
        Ok(None) => Err(malformed("any", "incomplete packet")),
        Err(_) => Err(malformed(
            wire_check::packet_name(header.first_byte >> 4),
            "rejected by the codec",
        )),
    }
}

/// The shared CONNECT rules; the protocol version they found.
fn connect_version(packet: &[u8]) -> Result<Version, ProtocolError> {
    let info = mqtt_connect::parse_connect(packet).map_err(|error| match error {
        ConnectError::UnsupportedLevel { name, level } => ProtocolError::UnsupportedProtocol {
            name: name.to_owned(),
            level,
        },
        ConnectError::IdentifierRejected(reason) => ProtocolError::IdentifierRejected(reason),
        ConnectError::Malformed(reason) => malformed("CONNECT", reason),
        ConnectError::NotConnect(_) => malformed("CONNECT", "reserved fixed-header flags"),
    })?;
    Version::from_level(info.level).ok_or(ProtocolError::UnsupportedProtocol {
        name: "MQTT".to_owned(),
        level: info.level,
    })
}

fn malformed(packet: &'static str, reason: &'static str) -> ProtocolError {
    ProtocolError::Malformed { packet, reason }
}

/// A 5.0 Protocol Error (DISCONNECT 0x82).
fn violation(packet: &'static str, reason: &'static str) -> ProtocolError {
    ProtocolError::Violation {
        packet,
        reason,
        code: 0x82,
    }
}

/// The rules of a 5.0 PUBLISH or SUBSCRIBE that the codec would refuse as
/// malformed but that the standard gives their own reason code: a Topic
/// Alias of 0 (0x94, MQTT-3.3.2-8), a Subscription Identifier in a
/// PUBLISH from a client (MQTT-3.3.4-6) or of 0 in a SUBSCRIBE (0x82,
/// 5.0 §3.8.2.1.2). `None` for anything else, a malformed block included
/// (the codec then decides). A bounds-checked walk of the property block
/// only, with no allocation.
fn v5_rejection(first_byte: u8, body: &[u8]) -> Option<ProtocolError> {
    let mut r = body;
    let kind = first_byte >> 4;
    let (packet, properties) = match kind {
        wire_check::packet_type::PUBLISH => {
            let topic = usize::from(u16::from_be_bytes([*r.first()?, *r.get(1)?]));
            let id = if (first_byte >> 1) & 0b11 == 0 { 0 } else { 2 };
            r = r.get(2 + topic + id..)?;
            ("PUBLISH", properties_of(r)?)
        }
        wire_check::packet_type::SUBSCRIBE => ("SUBSCRIBE", properties_of(r.get(2..)?)?),
        _ => return None,
    };
    let mut p = properties;
    while let Some((&id, rest)) = p.split_first() {
        p = rest;
        let value_len = match id {
            0x01 => 1,
            0x02 => 4,
            0x23 => {
                let alias = u16::from_be_bytes([*p.first()?, *p.get(1)?]);
                if alias == 0 {
                    return Some(ProtocolError::Violation {
                        packet,
                        reason: "topic alias 0",
                        code: 0x94,
                    });
                }
                2
            }
            0x0B => {
                let (value, used) = varint::decode(p).ok()??;
                if packet == "PUBLISH" {
                    return Some(violation(packet, "subscription identifier from a client"));
                }
                if value == 0 {
                    return Some(violation(packet, "subscription identifier 0"));
                }
                used
            }
            0x03 | 0x08 | 0x09 => 2 + usize::from(u16::from_be_bytes([*p.first()?, *p.get(1)?])),
            0x26 => {
                let key = 2 + usize::from(u16::from_be_bytes([*p.first()?, *p.get(1)?]));
                let value = p.get(key..key + 2)?;
                key + 2 + usize::from(u16::from_be_bytes([value[0], value[1]]))
            }
            _ => return None,
        };
        p = p.get(value_len..)?;
    }
    None
}

/// The property block at the start of `r` (its length, then that many
/// bytes), if it is all there.
fn properties_of(r: &[u8]) -> Option<&[u8]> {
    let (len, used) = varint::decode(r).ok()??;
    r.get(used..used.checked_add(len)?)
}

fn qos_from(qos: rmqtt_codec::types::QoS) -> Qos {
    match qos {
        rmqtt_codec::types::QoS::AtMostOnce => Qos::AtMostOnce,
        rmqtt_codec::types::QoS::AtLeastOnce => Qos::AtLeastOnce,
        rmqtt_codec::types::QoS::ExactlyOnce => Qos::ExactlyOnce,
    }
}

fn from_v3(packet: v3::Packet) -> Result<Inbound, ProtocolError> {
    Ok(match packet {
        v3::Packet::Connect(c) => Inbound::Connect(Box::new(ConnectPacket {
            version: if c.protocol.0 == 3 {
                Version::Mqtt31
            } else {
                Version::Mqtt311
            },
            client_id: c.client_id.to_string(),
            clean_session: c.clean_session,
            keep_alive: c.keep_alive,
            will: c.last_will.map(|w| WillPacket {
                topic: w.topic.to_string(),
                payload: w.message,
                qos: qos_from(w.qos),
                retain: w.retain,
                v5: None,
            }),
            username: c.username.map(|u| u.to_string()),
            password: c.password,
            v5: None,
        })),
        v3::Packet::Publish(p) => Inbound::Publish(PublishPacket {
            dup: p.dup,
            qos: qos_from(p.qos),
            packet_id: p.packet_id.map(|id| id.get()),
            retain: p.retain,
            topic: p.topic.to_string(),
            payload: p.payload,
            properties: None,
        }),
        v3::Packet::PublishAck { packet_id } => {
            Inbound::Puback(AckPacket::success(packet_id.get()))
        }
        v3::Packet::PublishReceived { packet_id } => {
            Inbound::Pubrec(AckPacket::success(packet_id.get()))
        }
        v3::Packet::PublishRelease { packet_id } => {
            Inbound::Pubrel(AckPacket::success(packet_id.get()))
        }
        v3::Packet::PublishComplete { packet_id } => {
            Inbound::Pubcomp(AckPacket::success(packet_id.get()))
        }
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => Inbound::Subscribe {
            packet_id: packet_id.get(),
            filters: topic_filters
                .into_iter()
                .map(|(filter, qos)| (filter.to_string(), qos_from(qos)))
                .collect(),
            v5: None,
        },
        v3::Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => Inbound::Unsubscribe {
            packet_id: packet_id.get(),
            filters: topic_filters.into_iter().map(|f| f.to_string()).collect(),
        },
        v3::Packet::PingRequest => Inbound::Pingreq,
        v3::Packet::Disconnect => Inbound::Disconnect(DisconnectPacket::default()),
        v3::Packet::ConnectAck(_)
        | v3::Packet::SubscribeAck { .. }
        | v3::Packet::UnsubscribeAck { .. }
        | v3::Packet::PingResponse => {
            return Err(malformed(
                "any",
                "a server-to-client packet sent by a client",
            ))
        }
    })
}

pub(super) fn from_v5(packet: v5::Packet) -> Result<Inbound, ProtocolError> {
    let inbound = match packet {
        v5::Packet::Connect(c) => {
            let c = *c;
            Inbound::Connect(Box::new(ConnectPacket {
                version: Version::Mqtt5,
                client_id: c.client_id.to_string(),
                clean_session: c.clean_start,
                keep_alive: c.keep_alive,
                will: c.last_will.map(|w| WillPacket {
                    topic: w.topic.to_string(),
                    payload: w.message,
                    qos: qos_from(w.qos),
                    retain: w.retain,
                    v5: Some(Box::new(WillV5 {
                        delay_interval: w.will_delay_interval_sec,
                        properties: PublishProperties {
                            topic_alias: None,
                            correlation_data: w.correlation_data,
                            message_expiry_interval: w.message_expiry_interval,
                            content_type: w.content_type,
                            user_properties: w.user_properties,
                            is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                            response_topic: w.response_topic,
                            subscription_ids: Vec::new(),
                        },
                    })),
                }),
                username: c.username.map(|u| u.to_string()),
                password: c.password,
                v5: Some(Box::new(ConnectV5 {
                    session_expiry_interval: c.session_expiry_interval_secs,
                    receive_maximum: c.receive_max,
                    maximum_packet_size: c.max_packet_size,
                    topic_alias_maximum: c.topic_alias_max,
                    request_response_information: c.request_response_info,
                    request_problem_information: c.request_problem_info,
                    user_properties: c.user_properties,
                    auth_method: c.auth_method.map(|m| m.to_string()),
                    auth_data: c.auth_data,
                })),
            }))
        }
        v5::Packet::Publish(p) => {
            let p = *p;
            Inbound::Publish(PublishPacket {
                dup: p.dup,
                qos: qos_from(p.qos),
                packet_id: p.packet_id.map(|id| id.get()),
                retain: p.retain,
                topic: p.topic.to_string(),
                payload: p.payload,
                properties: p.properties.map(Box::new),
            })
        }
        v5::Packet::PublishAck(a) => Inbound::Puback(AckPacket {
            packet_id: a.packet_id.get(),
            reason_code: a.reason_code.into(),
        }),
        v5::Packet::PublishReceived(a) => Inbound::Pubrec(AckPacket {
            packet_id: a.packet_id.get(),
            reason_code: a.reason_code.into(),
        }),
        v5::Packet::PublishRelease(a) => Inbound::Pubrel(AckPacket {
            packet_id: a.packet_id.get(),
            reason_code: a.reason_code.into(),
        }),
        v5::Packet::PublishComplete(a) => Inbound::Pubcomp(AckPacket {
            packet_id: a.packet_id.get(),
            reason_code: a.reason_code.into(),
        }),
        v5::Packet::Subscribe(s) => {
            let (filters, options) = s
                .topic_filters
                .into_iter()
                .map(|(filter, options)| ((filter.to_string(), qos_from(options.qos)), options))
                .unzip();
            Inbound::Subscribe {
                packet_id: s.packet_id.get(),
                filters,
                v5: Some(Box::new(SubscribeV5 {
                    subscription_id: s.id,
                    user_properties: s.user_properties,
                    options,
                })),
            }
        }
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            packet_id: u.packet_id.get(),
            filters: u.topic_filters.into_iter().map(|f| f.to_string()).collect(),
        },
        v5::Packet::PingRequest => Inbound::Pingreq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect(DisconnectPacket {
            reason_code: d.reason_code.into(),
            session_expiry_interval: d.session_expiry_interval_secs,
        }),
        v5::Packet::Auth(a) => Inbound::Auth(AuthPacket {
            reason_code: a.reason_code.into(),
            method: a.auth_method.map(|m| m.to_string()),
            data: a.auth_data,
        }),
        v5::Packet::ConnectAck(_)
        | v5::Packet::SubscribeAck(_)
        | v5::Packet::UnsubscribeAck(_)
        | v5::Packet::PingResponse => {
            return Err(malformed(
                "any",
                "a server-to-client packet sent by a client",
            ))
        }
    };
    check_v5(&inbound)?;
    Ok(inbound)
}

/// The 5.0 rules `rmqtt-codec` does not enforce (docs/mqtt5-codec.md,
/// "Conditions"). Topic-name wildcards are checked by the session for
/// every version ([`crate::router::topic::is_valid_topic_name`]).
fn check_v5(inbound: &Inbound) -> Result<(), ProtocolError> {
    match inbound {
        Inbound::Connect(c)
            if c.client_id.contains('\0')
                || c.username.as_deref().is_some_and(|u| u.contains('\0'))
                || c.will.as_ref().is_some_and(|w| w.topic.contains('\0')) =>
        {
            return Err(malformed("CONNECT", "U+0000 in a string"));
        }
        Inbound::Publish(p) => {
            if p.topic.contains('\0') {
                return Err(malformed("PUBLISH", "U+0000 in a string"));
            }
            if p.qos == Qos::AtMostOnce && p.dup {
                return Err(malformed("PUBLISH", "DUP set on a QoS 0 message"));
            }
            let alias = p.properties.as_ref().and_then(|props| props.topic_alias);
            if p.topic.is_empty() && alias.is_none() {
                return Err(violation("PUBLISH", "empty topic without a topic alias"));
            }
            if p.properties
                .as_ref()
                .is_some_and(|props| !props.subscription_ids.is_empty())
            {
                // MQTT-3.3.4-6.
                return Err(violation(
                    "PUBLISH",
                    "subscription identifier from a client",
                ));
            }
        }
        Inbound::Subscribe { filters, v5, .. } => {
            if filters.iter().any(|(f, _)| f.contains('\0')) {
                return Err(malformed("SUBSCRIBE", "U+0000 in a string"));
            }
            let options = v5.as_ref().map(|v| v.options.as_slice()).unwrap_or(&[]);
            for ((filter, _), options) in filters.iter().zip(options) {
                if options.no_local && filter.starts_with("$share/") {
                    // MQTT-3.8.3-4.
                    return Err(violation("SUBSCRIBE", "No Local on a shared subscription"));
                }
            }
        }
        Inbound::Unsubscribe { filters, .. } if filters.iter().any(|f| f.contains('\0')) => {
            return Err(malformed("UNSUBSCRIBE", "U+0000 in a string"));
        }
        _ => {}
    }
    Ok(())
}
