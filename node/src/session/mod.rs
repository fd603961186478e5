//! One client session: from CONNECT to the end of the connection.
//!
//! - [`handshake`] reads and checks CONNECT (its credentials through
//!   [`crate::auth`], before anything else of the client's is touched;
//!   a will the ACL denies is dropped there),
//!   takes the client id over from an older connection, claims the session in the store and answers
//!   CONNACK;
//! - [`active`] runs the connected session: the loop, keep-alive, resume,
//!   and what happens at the end (will, parking); `inbound` handles the
//!   client's publishes and subscriptions, `outbound` sends deliveries;
//! - [`acks`] holds the acknowledgements owed to a publisher until its
//!   messages are safe in Redis;
//! - [`window`] is the outgoing QoS 1/2 state machine. What a persistent
//!   session keeps is in [`crate::session_state`] (shared with the store),
//!   and how the rest of the node reaches a connected session in
//!   [`crate::registry`].

pub mod acks;
pub mod active;
pub mod handshake;
mod inbound;
mod outbound;
mod read_mark;
mod spill;
pub mod v5;
mod will;
pub mod window;

pub use handshake::serve;

use tokio::sync::watch;

/// A signal every session listens to: true once the node shuts down.
pub type ShutdownSignal = watch::Receiver<bool>;
