//! Packets as the broker uses them, decoded from and encoded to the wire
//! with `rmqtt-codec` 0.3.1 (MQTT 3.1, 3.1.1 and 5.0).
//!
//! - [`packets`]: [`Inbound`] and its parts, owned values whose payloads
//!   share the read buffer; 5.0 properties ride along in boxed fields that
//!   are `None` on 3.1.1 connections.
//! - [`decode`]: one framed packet from the connection's read buffer to an
//!   [`Inbound`], with the checks the codec does not make.
//! - [`encode`]: what the node sends a 3.1/3.1.1 client, and PUBLISH for
//!   both versions; [`encode_v5`]: what only 5.0 has (reason codes on
//!   acknowledgements, SUBACK/UNSUBACK property blocks, DISCONNECT, the
//!   5.0 CONNACK).

mod decode;
mod encode;
mod encode_v5;
mod packets;

pub use decode::{decode, decode_first};
pub use encode::*;
pub use encode_v5::*;
pub use packets::*;

#[cfg(test)]
mod tests;
