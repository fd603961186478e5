//! The CONNECT reader: the only MQTT the proxy understands.
//!
//! A client's first packet must be a CONNECT. The proxy reads it (bounded in
//! time and size), checks that it is well formed, and takes the client id
//! and username from it for routing and logs; the bytes themselves are
//! forwarded unchanged. Anything else is refused here, before a node is
//! dialled, so garbage and port scans never cost a broker anything.
//!
//! Parsing is by hand with a bounds-checked cursor: every read checks the
//! remaining length first and returns [`Reject::Malformed`] instead of
//! indexing past the end, so no input can panic (a property test below feeds
//! it random bytes). `mqttrs` is not used: it panics on malformed input
//! (see TECHNOTES).
//!
//! Accepted: MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (`MQTT`, level 4) and 5.0
//! (`MQTT`, level 5; properties are skipped). The 3.1.1 rules the node
//! enforces are checked here too (reserved flag, will flags, password
//! without username), so what passes the proxy is what a node accepts.

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

/// What the proxy learnt from a client's CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// Protocol level: 3 (3.1), 4 (3.1.1) or 5 (5.0).
    pub level: u8,
    /// The client identifier; may be empty (the broker then assigns one).
    pub client_id: String,
    /// The user name, when the client sent one.
    pub username: Option<String>,
    /// The clean-session (clean-start) flag.
    pub clean_session: bool,
    /// Keep-alive in seconds.
    pub keep_alive: u16,
}

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
            Reject::Malformed(_) | Reject::UnsupportedLevel(_) => "malformed",
            Reject::TooLarge(_) => "too_large",
            Reject::Closed => "closed",
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
/// [`frame_len`]. Never panics; every field read is bounds checked.
pub fn parse_connect(packet: &[u8]) -> Result<ConnectInfo, Reject> {
    let mut r = Cursor::new(packet);
    let first = r.u8()?;
    if first != 0x10 {
        return Err(Reject::NotConnect(first));
    }
    let remaining = r.varint()?;
    if remaining != r.left() {
        return Err(Reject::Malformed(
            "remaining length does not match the packet",
        ));
    }
    let name = r.field()?;
    let level = r.u8()?;
    match (name, level) {
        (b"MQIsdp", 3) | (b"MQTT", 4) | (b"MQTT", 5) => {}
        (b"MQIsdp", _) | (b"MQTT", _) => return Err(Reject::UnsupportedLevel(level)),
        _ => return Err(Reject::Malformed("unknown protocol name")),
    }
    let v5 = level == 5;
    let flags = r.u8()?;
    let keep_alive = r.u16()?;
    if flags & 0x01 != 0 {
        return Err(Reject::Malformed("reserved connect flag set"));
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if will_qos == 3 {
        return Err(Reject::Malformed("will QoS 3"));
    }
    if !will && (will_qos != 0 || will_retain) {
        return Err(Reject::Malformed("will QoS or retain without a will"));
    }
    if !v5 && has_password && !has_username {
        return Err(Reject::Malformed("password without user name"));
    }
    if v5 {
        r.skip_properties()?;
    }
    let client_id = r.string()?;
    if will {
        if v5 {
            r.skip_properties()?;
        }
        r.string()?; // will topic
        r.field()?; // will payload
    }
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    if has_password {
        r.field()?;
    }
    if r.left() != 0 {
        return Err(Reject::Malformed("bytes after the last CONNECT field"));
    }
    Ok(ConnectInfo {
        level,
        client_id,
        username,
        clean_session: flags & 0x02 != 0,
        keep_alive,
    })
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

/// A bounds-checked reader over one packet.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        if n > self.left() {
            return Err(Reject::Malformed("field runs past the end of the packet"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Reject> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Reject> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A variable byte integer (at most 4 bytes).
    fn varint(&mut self) -> Result<usize, Reject> {
        match varint::decode(&self.buf[self.pos..]) {
            Ok(Some((value, len))) => {
                self.pos += len;
                Ok(value)
            }
            Ok(None) => Err(Reject::Malformed("field runs past the end of the packet")),
            Err(_) => Err(Reject::Malformed("variable integer longer than 4 bytes")),
        }
    }

    /// A length-prefixed binary field.
    fn field(&mut self) -> Result<&'a [u8], Reject> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A length-prefixed UTF-8 string without U+0000.
    fn string(&mut self) -> Result<String, Reject> {
        let bytes = self.field()?;
        let text =
            std::str::from_utf8(bytes).map_err(|_| Reject::Malformed("string is not UTF-8"))?;
        if text.contains('\0') {
            return Err(Reject::Malformed("string contains U+0000"));
        }
        Ok(text.to_owned())
    }

    /// MQTT 5 properties: a length, then that many bytes we do not need.
    fn skip_properties(&mut self) -> Result<(), Reject> {
        let len = self.varint()?;
        self.take(len).map(|_| ())
    }
}

#[cfg(test)]
mod tests;
