//! Reading raw Redis replies (`redis::Value`) without trusting their shape.

use bytes::Bytes;
use redis::Value;

use crate::message::Qos;
use crate::subscription::Subscription;

/// A reply that did not have the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("unexpected Redis reply: {0}")]
pub struct UnexpectedReply(pub &'static str);

/// The elements of an array reply (`Nil` reads as empty).
pub fn array(value: Value) -> Result<Vec<Value>, UnexpectedReply> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(UnexpectedReply("expected an array")),
    }
}

/// An integer reply.
pub fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => parse_u64(b).map(|n| n as i64),
        _ => None,
    }
}

/// A bulk string reply as shared bytes.
pub fn bulk(value: &Value) -> Option<Bytes> {
    match value {
        Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

/// A list of bulk strings (`None` or `Nil` read as empty).
pub fn bulk_list(value: Option<&Value>) -> Result<Vec<Bytes>, UnexpectedReply> {
    match value {
        None | Some(Value::Nil) => Ok(Vec::new()),
        Some(Value::Array(items)) | Some(Value::Set(items)) => items
            .iter()
            .map(|v| bulk(v).ok_or(UnexpectedReply("expected bulk strings")))
            .collect(),
        Some(Value::Map(pairs)) => {
            let mut out = Vec::with_capacity(pairs.len() * 2);
            for (k, v) in pairs {
                out.push(bulk(k).ok_or(UnexpectedReply("expected bulk strings"))?);
                out.push(bulk(v).ok_or(UnexpectedReply("expected bulk strings"))?);
            }
            Ok(out)
        }
        Some(_) => Err(UnexpectedReply("expected a list")),
    }
}

/// A decimal number in ASCII.
pub fn parse_u64(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// A session's subscriptions from the flat (filter, record) list of its
/// `...:subs` hash (`HGETALL`). A record that does not read (written by
/// something else) counts as a QoS 0 subscription, as a bare digit did
/// before options were kept; a filter that is not UTF-8 is skipped.
pub fn subscriptions(flat: &[Bytes]) -> Vec<(String, Subscription)> {
    flat.chunks_exact(2)
        .filter_map(|pair| {
            let filter = String::from_utf8(pair[0].to_vec()).ok()?;
            let record = std::str::from_utf8(&pair[1]).ok();
            let subscription = record
                .and_then(Subscription::from_record)
                .unwrap_or(Subscription::at(Qos::AtMostOnce));
            Some((filter, subscription))
        })
        .collect()
}

/// One stream entry: its id and its field/value pairs.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    /// The entry id (`ms-seq`).
    pub id: String,
    /// Field/value pairs in order.
    pub fields: Vec<(Bytes, Bytes)>,
}

impl StreamEntry {
    /// The value of `field`, if present.
    pub fn get(&self, field: &[u8]) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(f, _)| f.as_ref() == field)
            .map(|(_, v)| v)
    }
}

/// Entries of an XRANGE reply, or of one stream in an XREAD reply.
pub fn stream_entries(value: &Value) -> Result<Vec<StreamEntry>, UnexpectedReply> {
    let Value::Array(entries) = value else {
        return match value {
            Value::Nil => Ok(Vec::new()),
            _ => Err(UnexpectedReply("expected stream entries")),
        };
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                return Err(UnexpectedReply("expected an entry"));
            };
            let id = parts
                .first()
                .and_then(bulk)
                .ok_or(UnexpectedReply("entry without id"))?;
            let flat = bulk_list(parts.get(1))?;
            let fields = flat
                .chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            Ok(StreamEntry {
                id: String::from_utf8_lossy(&id).into_owned(),
                fields,
            })
        })
        .collect()
}

/// An XREAD reply: (stream key, entries) per stream that had entries.
pub fn xread_reply(value: Value) -> Result<Vec<(String, Vec<StreamEntry>)>, UnexpectedReply> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop().unwrap_or(Value::Nil);
                    let key = kv.pop().unwrap_or(Value::Nil);
                    Ok((key, entries))
                }
                _ => Err(UnexpectedReply("expected [stream, entries]")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(UnexpectedReply("expected an XREAD reply")),
    };
    streams
        .into_iter()
        .map(|(key, entries)| {
            let key = bulk(&key).ok_or(UnexpectedReply("stream name"))?;
            Ok((
                String::from_utf8_lossy(&key).into_owned(),
                stream_entries(&entries)?,
            ))
        })
        .collect()
}

/// The id right after `id`, for XTRIM MINID (drop everything up to `id`).
pub fn next_stream_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    Some(format!("{ms}-{}", seq.checked_add(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_xread_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            bs("inbox"),
            Value::Array(vec![Value::Array(vec![
                bs("1-0"),
                Value::Array(vec![bs("m"), bs("x")]),
            ])]),
        ])]);
        let streams = xread_reply(reply).unwrap();
        assert_eq!(streams[0].0, "inbox");
        assert_eq!(streams[0].1[0].id, "1-0");
        assert_eq!(streams[0].1[0].get(b"m").unwrap().as_ref(), b"x");
        assert!(xread_reply(Value::Nil).unwrap().is_empty());
        assert!(xread_reply(Value::Int(3)).is_err());
    }

    #[test]
    fn next_id_increments_the_sequence() {
        assert_eq!(next_stream_id("17-4").as_deref(), Some("17-5"));
        assert_eq!(next_stream_id("garbage"), None);
    }
}
