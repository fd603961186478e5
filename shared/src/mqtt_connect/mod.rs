//! The one CONNECT rule set of AstraMQ, used by the node and the proxy.
//!
//! Both read a client's first packet: the proxy to route it (and to refuse
//! garbage before a node is dialled), the node to serve it. They used to
//! parse it separately and disagreed (a 5.0 CONNECT passed the proxy and
//! was refused by every node). Now both call [`parse_connect`], so what
//! passes the proxy is what a node accepts, and a refusal carries the same
//! CONNACK code on either side ([`ConnectError::connack_code`]).
//!
//! What is checked, in this order (the order decides which answer a
//! CONNECT with several faults gets, so it is part of the rule set):
//!
//! 1. the fixed header: first byte `0x10`, remaining length equal to the
//!    packet (MQTT-2.2.2-2, MQTT-2.2.3);
//! 2. the protocol name and level: `MQIsdp`/3 (3.1), `MQTT`/4 (3.1.1) and
//!    `MQTT`/5 (5.0) are accepted ([`ACCEPTED_LEVELS`]); a known name with another level
//!    is answered CONNACK 0x01 (MQTT-3.1.2-2), an unknown name is closed
//!    without an answer (MQTT-3.1.2-1);
//! 3. the connect flags: reserved bit 0 clear (MQTT-3.1.2-3), will QoS at
//!    most 2 (MQTT-3.1.2-14), will QoS and retain 0 without a will
//!    (MQTT-3.1.2-11/13, 5.0 §3.1.2.6/7), in 3.1/3.1.1 no password without a
//!    user name (MQTT-3.1.2-22);
//! 4. every field present and nothing after the last one, strings UTF-8
//!    without U+0000 (MQTT-1.5.3-1/2); in 5.0 the property blocks are
//!    length-checked and skipped (their contents are the node's codec's
//!    business);
//! 5. the will topic is a topic name: not empty, no `+` or `#`
//!    (MQTT-3.1.2-9 with 4.7);
//! 6. the client identifier: an empty one needs a clean session in 3.1.1
//!    (MQTT-3.1.3-8) and is not allowed in 3.1, whose ids are at most 23
//!    bytes; these are answered CONNACK 0x02.
//!
//! Limits an operator configures (longest client id, will payload size),
//! credentials and ACLs are the node's alone: the proxy forwards such a
//! CONNECT and the node's answer reaches the client through it.
//!
//! The parser is a bounds-checked cursor: every read checks what is left
//! first, so no input can panic (property tests in `tests.rs`), and nothing
//! recurses.

/// Protocol levels a CONNECT may carry and be served: 3 (MQTT 3.1,
/// `MQIsdp`), 4 (MQTT 3.1.1, `MQTT`) and 5 (MQTT 5.0, `MQTT`).
pub const ACCEPTED_LEVELS: &[u8] = &[3, 4, 5];

/// Longest client id MQTT 3.1 (protocol level 3) allows.
pub const MQTT31_MAX_CLIENT_ID: usize = 23;

/// What a CONNECT says that its readers act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// Protocol level: 3 (3.1), 4 (3.1.1) or 5 (5.0).
    pub level: u8,
    /// The client identifier; may be empty (the node then assigns one).
    pub client_id: String,
    /// The user name, when the client sent one.
    pub username: Option<String>,
    /// The clean-session (5.0: clean-start) flag.
    pub clean_session: bool,
    /// Keep-alive in seconds.
    pub keep_alive: u16,
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The packet is of another type (or is not MQTT at all).
    #[error("first packet is not a CONNECT (first byte {0:#04x})")]
    NotConnect(u8),
    /// A CONNECT that breaks the protocol; closed without an answer.
    #[error("malformed CONNECT: {0}")]
    Malformed(&'static str),
    /// A known protocol name with a level not in [`ACCEPTED_LEVELS`].
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedLevel {
        /// The protocol name the client sent (`MQTT` or `MQIsdp`).
        name: &'static str,
        /// The level it sent.
        level: u8,
    },
    /// A client identifier the protocol does not allow here.
    #[error("client identifier rejected: {0}")]
    IdentifierRejected(&'static str),
}

impl ConnectError {
    /// The 3.1.1 CONNACK return code to answer with before closing, or
    /// `None` to close without an answer.
    pub fn connack_code(&self) -> Option<u8> {
        match self {
            ConnectError::UnsupportedLevel { .. } => Some(0x01),
            ConnectError::IdentifierRejected(_) => Some(0x02),
            ConnectError::NotConnect(_) | ConnectError::Malformed(_) => None,
        }
    }
}

/// Checks one whole CONNECT packet (fixed header included) against the
/// rule set above and returns what it says.
pub fn parse_connect(packet: &[u8]) -> Result<ConnectInfo, ConnectError> {
    parse_connect_for(packet, ACCEPTED_LEVELS)
}

/// [`parse_connect`] with the accepted levels as a parameter (tests check
/// the answer to a level that is known but not accepted with it).
pub fn parse_connect_for(packet: &[u8], accepted: &[u8]) -> Result<ConnectInfo, ConnectError> {
    let mut r = Cursor::new(packet);
    let first = r.u8()?;
    if first != 0x10 {
        return Err(ConnectError::NotConnect(first));
    }
    let remaining = r.varint()?;
    if remaining != r.left() {
        return Err(ConnectError::Malformed(
            "remaining length does not match the packet",
        ));
    }
    let name = match r.field()? {
        b"MQTT" => "MQTT",
        b"MQIsdp" => "MQIsdp",
        _ => return Err(ConnectError::Malformed("unknown protocol name")),
    };
    let level = r.u8()?;
    let known = matches!((name, level), ("MQIsdp", 3) | ("MQTT", 4) | ("MQTT", 5));
    if !known || !accepted.contains(&level) {
        return Err(ConnectError::UnsupportedLevel { name, level });
    }
    let v5 = level == 5;
    let flags = r.u8()?;
    let keep_alive = r.u16()?;
    if flags & flag::RESERVED != 0 {
        return Err(ConnectError::Malformed("reserved connect flag set"));
    }
    let will = flags & flag::WILL != 0;
    let will_qos = (flags & flag::WILL_QOS) >> 3;
    let has_password = flags & flag::PASSWORD != 0;
    let has_username = flags & flag::USERNAME != 0;
    if will_qos == 3 {
        return Err(ConnectError::Malformed("will QoS 3"));
    }
    if !will && (will_qos != 0 || flags & flag::WILL_RETAIN != 0) {
        return Err(ConnectError::Malformed("will QoS or retain without a will"));
    }
    if !v5 && has_password && !has_username {
        return Err(ConnectError::Malformed("password without user name"));
    }
    if v5 {
        r.skip_properties()?;
    }
    let client_id = r.string()?;
    if will {
        if v5 {
            r.skip_properties()?;
        }
        let topic = r.string()?;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(ConnectError::Malformed(
                "will topic is not a valid topic name",
            ));
        }
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
        return Err(ConnectError::Malformed(
            "bytes after the last CONNECT field",
        ));
    }
    let clean_session = flags & flag::CLEAN_SESSION != 0;
    if client_id.is_empty() && !v5 && (level == 3 || !clean_session) {
        return Err(ConnectError::IdentifierRejected(
            "empty client id without a clean session (or in MQTT 3.1)",
        ));
    }
    if level == 3 && client_id.len() > MQTT31_MAX_CLIENT_ID {
        return Err(ConnectError::IdentifierRejected(
            "MQTT 3.1 client id over 23 bytes",
        ));
    }
    Ok(ConnectInfo {
        level,
        client_id,
        username,
        clean_session,
        keep_alive,
    })
}

/// CONNECT flag bits (MQTT-3.1.2.3).
mod flag {
    pub const RESERVED: u8 = 0b0000_0001;
    pub const CLEAN_SESSION: u8 = 0b0000_0010;
    pub const WILL: u8 = 0b0000_0100;
    pub const WILL_QOS: u8 = 0b0001_1000;
    pub const WILL_RETAIN: u8 = 0b0010_0000;
    pub const PASSWORD: u8 = 0b0100_0000;
    pub const USERNAME: u8 = 0b1000_0000;
}

/// A bounds-checked reader over one packet.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    fn left(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ConnectError> {
        if n > self.buf.len() {
            return Err(ConnectError::Malformed(
                "field runs past the end of the packet",
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ConnectError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ConnectError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A variable byte integer (at most 4 bytes).
    fn varint(&mut self) -> Result<usize, ConnectError> {
        match crate::varint::decode(self.buf) {
            Ok(Some((value, len))) => {
                self.buf = &self.buf[len..];
                Ok(value)
            }
            Ok(None) => Err(ConnectError::Malformed(
                "field runs past the end of the packet",
            )),
            Err(_) => Err(ConnectError::Malformed(
                "variable integer longer than 4 bytes",
            )),
        }
    }

    /// A length-prefixed binary field.
    fn field(&mut self) -> Result<&'a [u8], ConnectError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A length-prefixed UTF-8 string without U+0000.
    fn string(&mut self) -> Result<String, ConnectError> {
        let bytes = self.field()?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ConnectError::Malformed("string is not UTF-8"))?;
        if text.contains('\0') {
            return Err(ConnectError::Malformed("string contains U+0000"));
        }
        Ok(text.to_owned())
    }

    /// MQTT 5 properties: a length, then that many bytes.
    fn skip_properties(&mut self) -> Result<(), ConnectError> {
        let len = self.varint()?;
        self.take(len).map(|_| ())
    }
}

#[cfg(test)]
mod tests;

mod refusal;
pub use refusal::{Refusal, RefusingConnack};
