//! The CONNECT reader: the only MQTT the proxy understands.
//!
//! A client's first packet must be a CONNECT. The proxy reads it (bounded in
//! time and size), checks that it is well formed, and takes the client id
//! and username from it for routing and logs; the bytes themselves are
//! forwarded unchanged. Anything else is refused here, before a node is
//! dialled, so garbage and port scans never cost a broker anything.
//!
//! The rules are not the proxy's own: [`parse_connect`] applies
//! [`astramq_shared::mqtt_connect`], the rule set the node applies too, so
//! what passes the proxy is exactly what a node accepts (and a refusal
//! gets the same CONNACK code on either side): MQTT 3.1 (`MQIsdp`, level
//! 3), 3.1.1 and 5.0 (`MQTT`, levels 4 and 5); the client id and user name
//! of a 5.0 CONNECT are read past its property blocks. The parser is bounds
//! checked and cannot panic (property tests here and in `shared`).

use std::time::Duration;

use astramq_shared::varint;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most read from the socket at a time while waiting for CONNECT.
const READ_CHUNK: usize = 4096;

/// Room for the first read: most CONNECTs fit. The buffer then grows with
/// what has arrived (at most doubling, up to [`READ_CHUNK`] a read), so a
/// socket that sends nothing holds this much and one that dribbles a byte
/// at a time about twice what it sent, never a whole chunk.
const FIRST_READ: usize = 256;

pub use astramq_shared::mqtt_connect::ConnectInfo;
use astramq_shared::mqtt_connect::{self, ConnectError};

/// Why a connection was refused before any node was dialled. Each variant
/// is one value of the `reason` label of `astramq_proxy_rejects_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// No complete CONNECT within the connect timeout.
    #[error("no CONNECT within the connect timeout")]
    Timeout,
    /// The first packet is of another type (or is not MQTT at all).
    #[error("first packet is not a CONNECT (first byte {0:#04x})")]
    NotConnect(u8),
    /// A CONNECT that breaks the protocol; the text says how.
    #[error("malformed CONNECT: {0}")]
    Malformed(&'static str),
    /// A CONNECT with a protocol name we know but a level we do not speak;
    /// the client is told so with CONNACK 0x01.
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
    /// A client identifier the protocol does not allow (empty without a
    /// clean session, or a 3.1 id over 23 bytes); answered CONNACK 0x02.
    #[error("client identifier rejected: {0}")]
    IdentifierRejected(&'static str),
    /// The CONNECT announces more bytes than `--max-connect-size`.
    #[error("CONNECT of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The client closed (or reset) the connection before sending anything.
    #[error("client closed the connection before sending CONNECT")]
    Closed,
}

impl Reject {
    /// The `reason` label value.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::Timeout => "timeout",
            Reject::NotConnect(_) => "not_connect",
            Reject::Malformed(_) | Reject::UnsupportedLevel(_) | Reject::IdentifierRejected(_) => {
                "malformed"
            }
            Reject::TooLarge(_) => "too_large",
            Reject::Closed => "closed",
        }
    }

    /// The CONNACK return code the client is told before the close, if any
    /// (the same code a node would answer).
    pub fn connack_code(&self) -> Option<u8> {
        match self {
            Reject::UnsupportedLevel(_) => Some(0x01),
            Reject::IdentifierRejected(_) => Some(0x02),
            _ => None,
        }
    }
}

impl From<ConnectError> for Reject {
    fn from(error: ConnectError) -> Reject {
        match error {
            ConnectError::NotConnect(byte) => Reject::NotConnect(byte),
            ConnectError::Malformed(why) => Reject::Malformed(why),
            ConnectError::UnsupportedLevel { level, .. } => Reject::UnsupportedLevel(level),
            ConnectError::IdentifierRejected(why) => Reject::IdentifierRejected(why),
        }
    }
}

/// Looks at the start of a stream and says how long its first packet is.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some(len))`: the first `len` bytes
/// of `buf` are one whole packet. Refuses a non-CONNECT, a bad fixed header,
/// and a packet longer than `max_size`, as soon as the header shows it (so a
/// huge packet is never buffered).
pub fn frame_len(buf: &[u8], max_size: usize) -> Result<Option<usize>, Reject> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 != 1 {
        return Err(Reject::NotConnect(first));
    }
    if first & 0x0F != 0 {
        return Err(Reject::Malformed("reserved fixed-header flags set"));
    }
    let decoded = varint::decode(&buf[1..])
        .map_err(|_| Reject::Malformed("remaining length longer than 4 bytes"))?;
    let Some((remaining, length_bytes)) = decoded else {
        return Ok(None);
    };
    let total = 1 + length_bytes + remaining;
    if total > max_size {
        return Err(Reject::TooLarge(total));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Parses one whole CONNECT packet (fixed header included), as delimited by
/// [`frame_len`], with the shared rule set. Never panics.
pub fn parse_connect(packet: &[u8]) -> Result<ConnectInfo, Reject> {
    Ok(mqtt_connect::parse_connect(packet)?)
}

/// Reads the first packet from `stream` into `buf` and parses it.
///
/// Returns the CONNECT and its length: `buf[..len]` is the CONNECT and
/// anything after it is what the client sent next (clients may send before
/// CONNACK), to be forwarded too. Bounded by `timeout` as a whole — a
/// deadline from the call, not an idle timer, so bytes trickling in do not
/// extend it — and by `max_size` (plus one read chunk) in memory.
pub async fn read_connect<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_size: usize,
    timeout: Duration,
) -> Result<(ConnectInfo, usize), Reject>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let read = async {
        loop {
            if let Some(len) = frame_len(buf, max_size)? {
                return Ok((parse_connect(&buf[..len])?, len));
            }
            buf.reserve(buf.len().clamp(FIRST_READ, READ_CHUNK));
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) if buf.is_empty() => return Err(Reject::Closed),
                Ok(0) | Err(_) => return Err(Reject::Malformed("connection closed mid-CONNECT")),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Reject::Timeout))
}

#[cfg(test)]
mod tests;
