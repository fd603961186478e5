//! Who receives a message: topic validation and the subscription tree.
//!
//! The router knows subscriptions, not connections: it answers "which
//! clients, at which QoS" and the broker hands each delivery to a mailbox
//! (online) or to the store's offline queue (persistent session offline).

pub mod shared;
pub mod topic;
pub mod tree;

pub use tree::{Matches, SubscribeOutcome, SubscriptionTree, UnsubscribeOutcome};
