//! A subscription's terms, and what a client's matching subscriptions say
//! about one message.
//!
//! A 3.1.1 subscription is only its QoS. A 5.0 one adds No Local, Retain
//! As Published and a Subscription Identifier (5.0 §3.8.3.1, §3.8.2.1.2);
//! these are part of the session, so they are kept wherever the session's
//! subscriptions are (the tree, the parked state, Redis) in one short text
//! form ([`Subscription::to_record`]). Retain Handling is not kept: it only
//! decides what a SUBSCRIBE is answered with.
//!
//! When several of a client's subscriptions match a message, the client
//! gets it once (MQTT-3.3.5-1, 5.0 §3.3.4): at the highest QoS granted
//! among them, with every Subscription Identifier among them, and with its
//! retain flag if any of them is Retain As Published. A No Local
//! subscription does not match its own client's messages.

use std::num::NonZeroU32;
use std::sync::Arc;

use crate::message::{Delivery, Message, Qos};

/// The terms a client subscribed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// The QoS granted (at most the one requested).
    pub qos: Qos,
    /// 5.0 No Local: messages the client publishes are not sent back to it.
    pub no_local: bool,
    /// 5.0 Retain As Published: forwarded messages keep their retain flag.
    pub retain_as_published: bool,
    /// 5.0 Subscription Identifier, sent with every message it matches.
    pub id: Option<NonZeroU32>,
}

impl Subscription {
    /// A subscription with only a QoS (every 3.1.1 subscription).
    pub fn at(qos: Qos) -> Subscription {
        Subscription {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }

    /// The text form kept in Redis: the QoS digit, `n` for No Local, `r`
    /// for Retain As Published, then `:` and the identifier. A 3.1.1
    /// subscription is its QoS digit alone, as it always was.
    pub fn to_record(&self) -> String {
        let mut record = self.qos.as_u8().to_string();
        if self.no_local {
            record.push('n');
        }
        if self.retain_as_published {
            record.push('r');
        }
        if let Some(id) = self.id {
            record.push(':');
            record.push_str(&id.to_string());
        }
        record
    }

    /// Reads [`Self::to_record`]'s form; `None` for anything else.
    pub fn from_record(record: &str) -> Option<Subscription> {
        let (terms, id) = match record.split_once(':') {
            Some((terms, id)) => (terms, Some(id.parse::<NonZeroU32>().ok()?)),
            None => (record, None),
        };
        let mut chars = terms.chars();
        let qos = Qos::from_bits(chars.next()?.to_digit(10)? as u8)?;
        let mut subscription = Subscription {
            id,
            ..Subscription::at(qos)
        };
        for flag in chars {
            match flag {
                'n' => subscription.no_local = true,
                'r' => subscription.retain_as_published = true,
                _ => return None,
            }
        }
        Some(subscription)
    }
}

/// What one client's subscriptions that match a message say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The highest QoS granted among them.
    pub qos: Qos,
    /// True when one of them is Retain As Published.
    pub retain_as_published: bool,
    /// Their Subscription Identifiers, in no particular order.
    pub ids: Vec<u32>,
}

impl Matched {
    /// The first matching subscription.
    pub fn of(subscription: &Subscription) -> Matched {
        Matched {
            qos: subscription.qos,
            retain_as_published: subscription.retain_as_published,
            ids: subscription.id.map(NonZeroU32::get).into_iter().collect(),
        }
    }

    /// The forward of `message` to this client: at the best QoS, with the
    /// identifiers, and with the message's retain flag when one of the
    /// subscriptions is Retain As Published.
    pub fn deliver(self, message: Arc<Message>) -> Delivery {
        let retain = self.retain_as_published && message.retain;
        Delivery {
            retain,
            subscription_ids: self.ids,
            ..Delivery::forward(message, self.qos)
        }
    }

    /// Adds another matching subscription.
    pub fn add(&mut self, subscription: &Subscription) {
        self.qos = self.qos.max(subscription.qos);
        self.retain_as_published |= subscription.retain_as_published;
        if let Some(id) = subscription.id {
            self.ids.push(id.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_3_1_1_ones_are_a_digit() {
        let plain = Subscription::at(Qos::AtLeastOnce);
        assert_eq!(plain.to_record(), "1");
        assert_eq!(Subscription::from_record("1"), Some(plain));
        let full = Subscription {
            qos: Qos::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            id: NonZeroU32::new(268_435_455),
        };
        assert_eq!(full.to_record(), "2nr:268435455");
        assert_eq!(Subscription::from_record(&full.to_record()), Some(full));
        for bad in ["", "3", "1x", "1:0", "1:", "n1", "1:-2"] {
            assert_eq!(Subscription::from_record(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn overlapping_subscriptions_merge() {
        let mut m = Matched::of(&Subscription::at(Qos::AtMostOnce));
        m.add(&Subscription {
            qos: Qos::AtLeastOnce,
            retain_as_published: true,
            id: NonZeroU32::new(7),
            ..Subscription::at(Qos::AtMostOnce)
        });
        m.add(&Subscription {
            id: NonZeroU32::new(9),
            ..Subscription::at(Qos::AtMostOnce)
        });
        assert_eq!(m.qos, Qos::AtLeastOnce);
        assert!(m.retain_as_published);
        assert_eq!(m.ids, [7, 9]);
    }
}
