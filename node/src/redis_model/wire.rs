//! The binary form of messages, deliveries and in-flight entries as they
//! are stored in Redis and carried between nodes.
//!
//! Hand-written rather than serde: it is on the cross-node hot path, it
//! writes payloads without escaping, and decoding checks every length
//! against the input (data in Redis is not trusted more than a client).
//! Layout changes bump [`VERSION`].

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::{Delivery, Message, Properties, Qos};
use crate::session_state::OutgoingStage;

/// First byte of every encoded record.
pub const VERSION: u8 = 2;

/// Why a record from Redis could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("corrupt record in Redis: {0}")]
pub struct WireError(&'static str);

const FLAG_RETAIN: u8 = 0b0000_0100;
const FLAG_PROPERTIES: u8 = 0b0000_1000;
const FLAG_DELIVERY_RETAIN: u8 = 0b0001_0000;
const FLAG_PUBLISH_ID: u8 = 0b0010_0000;
const FLAG_PUBLISHER: u8 = 0b0100_0000;
const FLAG_SUBSCRIPTION_IDS: u8 = 0b1000_0000;

/// What a delivery adds to its message: its QoS, retain flag and 5.0
/// subscription identifiers.
type DeliveryFields<'a> = (Qos, bool, &'a [u32]);

/// [`DeliveryFields`] as read back.
type ReadDelivery = (Qos, bool, Vec<u32>);

/// Appends `message` (and, for a delivery, its QoS, retain flag and
/// subscription identifiers). The optional parts have a flag each, so a
/// record without them reads as it did before they existed.
fn put_message(out: &mut BytesMut, message: &Message, delivery: Option<DeliveryFields<'_>>) {
    let mut flags = message.qos.as_u8();
    if message.retain {
        flags |= FLAG_RETAIN;
    }
    if message.properties.is_some() {
        flags |= FLAG_PROPERTIES;
    }
    if let Some((_, true, _)) = delivery {
        flags |= FLAG_DELIVERY_RETAIN;
    }
    if message.publish_id.is_some() {
        flags |= FLAG_PUBLISH_ID;
    }
    if message.publisher.is_some() {
        flags |= FLAG_PUBLISHER;
    }
    let ids = delivery.map_or(&[][..], |(_, _, ids)| ids);
    if !ids.is_empty() {
        flags |= FLAG_SUBSCRIPTION_IDS;
    }
    out.put_u8(flags);
    if let Some((qos, _, _)) = delivery {
        out.put_u8(qos.as_u8());
    }
    put_str(out, &message.topic);
    out.put_u32(message.payload.len() as u32);
    out.put_slice(&message.payload);
    if let Some(p) = &message.properties {
        put_properties(out, p);
    }
    if let Some(id) = &message.publish_id {
        put_str(out, id);
    }
    if let Some(publisher) = &message.publisher {
        put_str(out, publisher);
    }
    if !ids.is_empty() {
        // At most one per subscription of the client: far below 65,535.
        out.put_u16(ids.len().min(usize::from(u16::MAX)) as u16);
        for id in ids.iter().take(usize::from(u16::MAX)) {
            out.put_u32(*id);
        }
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_opt_bytes(out: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.put_u8(1);
            out.put_u32(b.len() as u32);
            out.put_slice(b);
        }
        None => out.put_u8(0),
    }
}

fn put_properties(out: &mut BytesMut, p: &Properties) {
    out.put_u64(p.expires_at_ms.unwrap_or(0));
    out.put_u8(u8::from(p.payload_is_utf8));
    put_opt_bytes(out, p.content_type.as_deref().map(str::as_bytes));
    put_opt_bytes(out, p.response_topic.as_deref().map(str::as_bytes));
    put_opt_bytes(out, p.correlation_data.as_deref());
    out.put_u16(p.user_properties.len() as u16);
    for (k, v) in &p.user_properties {
        put_str(out, k);
        put_str(out, v);
    }
}

/// A bounds-checked reader over a record; slices share the input buffer.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.buf.remaining() < n {
            Err(WireError("truncated"))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, WireError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u16()?);
        let raw = self.bytes(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| WireError("invalid UTF-8"))
    }

    fn opt_bytes(&mut self) -> Result<Option<Bytes>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            _ => {
                let n = self.u32()? as usize;
                self.bytes(n).map(Some)
            }
        }
    }

    fn opt_string(&mut self) -> Result<Option<String>, WireError> {
        self.opt_bytes()?
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| WireError("invalid UTF-8")))
            .transpose()
    }

    fn qos(&mut self) -> Result<Qos, WireError> {
        Qos::from_bits(self.u8()?).ok_or(WireError("invalid QoS"))
    }

    fn message(
        &mut self,
        with_delivery: bool,
    ) -> Result<(Message, Option<ReadDelivery>), WireError> {
        let flags = self.u8()?;
        let qos = Qos::from_bits(flags & 0b11).ok_or(WireError("invalid QoS"))?;
        let delivery_qos = if with_delivery {
            Some(self.qos()?)
        } else {
            None
        };
        let topic = self.string()?;
        let len = self.u32()? as usize;
        let payload = self.bytes(len)?;
        let properties = if flags & FLAG_PROPERTIES != 0 {
            Some(Box::new(self.properties()?))
        } else {
            None
        };
        let publish_id = if flags & FLAG_PUBLISH_ID != 0 {
            Some(self.string()?.into())
        } else {
            None
        };
        let publisher = if flags & FLAG_PUBLISHER != 0 {
            Some(self.string()?.into())
        } else {
            None
        };
        let mut ids = Vec::new();
        if flags & FLAG_SUBSCRIPTION_IDS != 0 {
            let n = usize::from(self.u16()?);
            self.need(n * 4)?;
            ids = (0..n).map(|_| self.buf.get_u32()).collect();
        }
        let message = Message {
            topic: topic.into(),
            payload,
            qos,
            retain: flags & FLAG_RETAIN != 0,
            properties,
            publish_id,
            publisher,
        };
        Ok((
            message,
            delivery_qos.map(|q| (q, flags & FLAG_DELIVERY_RETAIN != 0, ids)),
        ))
    }

    fn properties(&mut self) -> Result<Properties, WireError> {
        let expires = self.u64()?;
        let payload_is_utf8 = self.u8()? != 0;
        let content_type = self.opt_string()?;
        let response_topic = self.opt_string()?;
        let correlation_data = self.opt_bytes()?;
        let count = self.u16()?;
        let mut user_properties = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            user_properties.push((self.string()?, self.string()?));
        }
        Ok(Properties {
            expires_at_ms: (expires != 0).then_some(expires),
            payload_is_utf8,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
        })
    }

    fn version(&mut self) -> Result<(), WireError> {
        match self.u8()? {
            VERSION => Ok(()),
            _ => Err(WireError("unknown record version")),
        }
    }
}

/// Encodes a batch of messages for one stream entry (several publishes per
/// entry keep Redis's per-entry cost off each message).
pub fn encode_batch<'a>(messages: impl IntoIterator<Item = &'a Arc<Message>>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    for message in messages {
        put_message(&mut out, message, None);
    }
    out.freeze()
}

/// Decodes a batch written by [`encode_batch`].
pub fn decode_batch(raw: Bytes) -> Result<Vec<Arc<Message>>, WireError> {
    let mut reader = Reader { buf: raw };
    reader.version()?;
    let mut out = Vec::new();
    while reader.buf.has_remaining() {
        out.push(Arc::new(reader.message(false)?.0));
    }
    Ok(out)
}

/// Encodes one delivery (offline queue entry).
pub fn encode_delivery(delivery: &Delivery) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    put_message(
        &mut out,
        &delivery.message,
        Some((delivery.qos, delivery.retain, &delivery.subscription_ids)),
    );
    out.freeze()
}

fn read_delivery(reader: &mut Reader) -> Result<Delivery, WireError> {
    let (message, delivery) = reader.message(true)?;
    let (qos, retain, subscription_ids) = delivery.ok_or(WireError("missing delivery fields"))?;
    Ok(Delivery {
        message: Arc::new(message),
        qos,
        retain,
        subscription_ids,
        shared: None,
        queued: None,
        pin: None,
    })
}

/// Decodes a record written by [`encode_delivery`].
pub fn decode_delivery(raw: Bytes) -> Result<Delivery, WireError> {
    let mut reader = Reader { buf: raw };
    reader.version()?;
    read_delivery(&mut reader)
}

/// The stage of an unacknowledged outgoing message as a session's
/// `inflight` hash keeps it (`packet id → stage mark + queue entry id`).
pub fn stage_mark(stage: OutgoingStage) -> &'static str {
    match stage {
        OutgoingStage::AwaitingPuback => "a",
        OutgoingStage::AwaitingPubrec => "p",
        OutgoingStage::AwaitingPubcomp => "r",
    }
}

/// Encodes an `inflight` hash value: stage mark, `|`, queue entry id.
pub fn encode_inflight(stage: OutgoingStage, queued: &str) -> String {
    format!("{}|{queued}", stage_mark(stage))
}

/// Decodes an `inflight` hash value into its stage and queue entry id.
pub fn decode_inflight(raw: &[u8]) -> Result<(OutgoingStage, String), WireError> {
    let text = std::str::from_utf8(raw).map_err(|_| WireError("invalid UTF-8"))?;
    let (mark, queued) = text
        .split_once('|')
        .ok_or(WireError("bad in-flight record"))?;
    let stage = match mark {
        "a" => OutgoingStage::AwaitingPuback,
        "p" => OutgoingStage::AwaitingPubrec,
        "r" => OutgoingStage::AwaitingPubcomp,
        _ => return Err(WireError("invalid in-flight stage")),
    };
    Ok((stage, queued.to_string()))
}

/// Encodes a message on its own (retained messages, wills).
pub fn encode_message(message: &Message) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(VERSION);
    put_message(&mut out, message, None);
    out.freeze()
}

/// Decodes a record written by [`encode_message`].
pub fn decode_message(raw: Bytes) -> Result<Message, WireError> {
    let mut reader = Reader { buf: raw };
    reader.version()?;
    Ok(reader.message(false)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(topic: &str, qos: Qos) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            Bytes::from_static(b"\x00payload\xff"),
            qos,
            true,
        ))
    }

    #[test]
    fn batch_round_trips() {
        let mut with_props = (*sample("p", Qos::AtMostOnce)).clone();
        with_props.properties = Some(Box::new(Properties {
            expires_at_ms: Some(42),
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        }));
        let batch = vec![
            sample("a/b", Qos::AtLeastOnce),
            Arc::new(with_props),
            sample("", Qos::ExactlyOnce),
        ];
        let decoded = decode_batch(encode_batch(&batch)).unwrap();
        assert_eq!(decoded, batch);
    }

    #[test]
    fn delivery_and_inflight_round_trip() {
        let mut message = (*sample("t", Qos::ExactlyOnce)).clone();
        message.publish_id = Some("n1-7-42".into());
        let delivery = Delivery::retained(Arc::new(message), Qos::AtLeastOnce);
        assert_eq!(
            decode_delivery(encode_delivery(&delivery)).unwrap(),
            delivery
        );
        // 5.0: the No Local publisher and the subscription identifiers.
        let mut message = (*sample("t", Qos::AtLeastOnce)).clone();
        message.publisher = Some("pub-1".into());
        let mut delivery = Delivery::forward(Arc::new(message), Qos::AtLeastOnce);
        delivery.subscription_ids = vec![1, 268_435_455];
        let raw = encode_delivery(&delivery);
        assert_eq!(decode_delivery(raw.clone()).unwrap(), delivery);
        for cut in 1..raw.len() {
            assert!(decode_delivery(raw.slice(..cut)).is_err(), "cut at {cut}");
        }
        let record = encode_inflight(OutgoingStage::AwaitingPubcomp, "17-0");
        assert_eq!(
            decode_inflight(record.as_bytes()).unwrap(),
            (OutgoingStage::AwaitingPubcomp, "17-0".to_string())
        );
        assert!(decode_inflight(b"x|1-0").is_err());
    }

    #[test]
    fn truncated_or_foreign_records_are_errors() {
        let raw = encode_batch(&[sample("a", Qos::AtMostOnce)]);
        for cut in 2..raw.len() {
            assert!(decode_batch(raw.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(decode_batch(Bytes::from_static(b"\x09")).is_err());
        assert!(decode_message(Bytes::new()).is_err());
    }
}
