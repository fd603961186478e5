//! Why a CONNECT is refused, in the words of each protocol version.
//!
//! The node and the proxy refuse clients for the same reasons; a 3.1/3.1.1
//! client is told with a CONNACK return code (3.2.2.3), a 5.0 client with
//! a CONNACK reason code (5.0 §3.2.2.2). This is the one mapping between
//! the two, so a refusal reads the same from either binary.
//!
//! Guaranteed: every refusal has a code in both versions; the 3.1.1 code
//! of a reason 3.1.1 has no word for is the closest it has (0x03, server
//! unavailable). Not covered: CONNACKs that accept (the node writes those
//! with their properties).

/// Why a client is refused at CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The protocol level is not one the broker speaks.
    UnsupportedProtocol,
    /// The client identifier is not allowed.
    IdentifierRejected,
    /// The broker cannot serve the client now.
    ServerUnavailable,
    /// Unknown user, wrong password.
    BadUserNameOrPassword,
    /// Not allowed to connect (e.g. anonymous when anonymous is refused).
    NotAuthorized,
    /// An enhanced authentication method the broker does not support
    /// (5.0 only; a 3.1.1 CONNECT cannot name one).
    BadAuthenticationMethod,
    /// A limit of the broker (sessions, connections) is reached.
    QuotaExceeded,
    /// The CONNECT is larger than the broker takes.
    PacketTooLarge,
    /// A will whose Payload Format Indicator says UTF-8 and whose payload
    /// is not (5.0 only).
    PayloadFormatInvalid,
}

impl Refusal {
    /// The 3.1/3.1.1 CONNACK return code.
    pub fn v311_code(self) -> u8 {
        match self {
            Refusal::UnsupportedProtocol => 0x01,
            Refusal::IdentifierRejected => 0x02,
            Refusal::ServerUnavailable
            | Refusal::QuotaExceeded
            | Refusal::PacketTooLarge
            | Refusal::PayloadFormatInvalid => 0x03,
            Refusal::BadUserNameOrPassword => 0x04,
            Refusal::NotAuthorized | Refusal::BadAuthenticationMethod => 0x05,
        }
    }

    /// The 5.0 CONNACK reason code.
    pub fn v5_code(self) -> u8 {
        match self {
            Refusal::UnsupportedProtocol => 0x84,
            Refusal::IdentifierRejected => 0x85,
            Refusal::ServerUnavailable => 0x88,
            Refusal::BadUserNameOrPassword => 0x86,
            Refusal::NotAuthorized => 0x87,
            Refusal::BadAuthenticationMethod => 0x8C,
            Refusal::QuotaExceeded => 0x97,
            Refusal::PacketTooLarge => 0x95,
            Refusal::PayloadFormatInvalid => 0x99,
        }
    }

    /// The code for a client that sent protocol `level` (5 for 5.0; any
    /// other level, known or not, is answered as 3.1.1 answers).
    pub fn code_for(self, level: u8) -> u8 {
        match level {
            5 => self.v5_code(),
            _ => self.v311_code(),
        }
    }

    /// The whole refusing CONNACK for a client of protocol `level`: four
    /// bytes for 3.1/3.1.1, five for 5.0 (session present 0, the reason
    /// code, an empty property block).
    pub fn connack(self, level: u8) -> RefusingConnack {
        match level {
            5 => RefusingConnack {
                bytes: [0x20, 0x03, 0x00, self.v5_code(), 0x00],
                len: 5,
            },
            _ => RefusingConnack {
                bytes: [0x20, 0x02, 0x00, self.v311_code(), 0],
                len: 4,
            },
        }
    }
}

/// A refusing CONNACK's bytes, without an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusingConnack {
    bytes: [u8; 5],
    len: usize,
}

impl std::ops::Deref for RefusingConnack {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn each_version_gets_its_own_connack() {
        assert_eq!(
            &*Refusal::ServerUnavailable.connack(4),
            &[0x20, 0x02, 0x00, 0x03]
        );
        assert_eq!(
            &*Refusal::ServerUnavailable.connack(3),
            &[0x20, 0x02, 0x00, 0x03]
        );
        assert_eq!(
            &*Refusal::ServerUnavailable.connack(5),
            &[0x20, 0x03, 0x00, 0x88, 0x00]
        );
        assert_eq!(Refusal::IdentifierRejected.connack(5)[3], 0x85);
        assert_eq!(Refusal::BadAuthenticationMethod.connack(5)[3], 0x8C);
        assert_eq!(Refusal::QuotaExceeded.connack(4)[3], 0x03);
        // An unknown level is answered as 3.1.1 answers.
        assert_eq!(
            &*Refusal::UnsupportedProtocol.connack(6),
            &[0x20, 0x02, 0x00, 0x01]
        );
    }
}
