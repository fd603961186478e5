//! What a connected session does with the packets its client sends:
//! publishes (acknowledged once safe), subscriptions and unsubscriptions
//! (written through to the store for persistent sessions), and the
//! retained messages a new subscription receives. With an ACL
//! ([`crate::acl`]), a denied publish is acknowledged and dropped and a
//! denied filter gets 0x80; without one, nothing is checked.

use std::collections::HashMap;
use std::sync::Arc;

use astramq_shared::log_text::untrusted;

use super::acks::Settled;
use super::active::{ActiveSession, End};
use super::v5::{message_properties, reason, RECEIVE_MAXIMUM};
use crate::acl::{Action, Identity};
use crate::cluster::bus::Qos2Origin;
use crate::cluster::Durability;
use crate::message::{unix_millis, Delivery, Message, Properties, Qos};
use crate::protocol::codec::{
    encode_suback, encode_suback_v5, Ack, EncodeError, PublishPacket, PublishProperties,
    RetainHandling, SubscribeV5,
};
use crate::router::shared;
use crate::router::topic::{filter_matches, is_valid_filter, is_valid_topic_name};
use crate::session_state::IncomingQos2;
use crate::stats::{AclDenial, LimitReason};
use crate::subscription::{Matched, Subscription};

impl ActiveSession {
    pub(super) async fn on_publish(&mut self, mut publish: PublishPacket) -> Option<End> {
        let mut properties = None;
        if let Some(v5) = self.v5.as_mut() {
            let p = publish.properties.take().unwrap_or_default();
            let topic = std::mem::take(&mut publish.topic);
            publish.topic = match v5.resolve_alias(topic, p.topic_alias.map(|a| a.get())) {
                Ok(topic) => topic,
                Err(error) => {
                    let why = format!("topic alias: {error:?}");
                    return Some(self.violation(reason::TOPIC_ALIAS_INVALID, why));
                }
            };
            if let Some(end) = self.check_v5_publish(&publish, &p) {
                return end;
            }
            // Boxed only when there is something to carry.
            let carried = message_properties(&p);
            properties = (carried != Properties::default()).then(|| Box::new(carried));
        }
        if !is_valid_topic_name(&publish.topic) {
            let topic = untrusted(&publish.topic);
            return Some(self.protocol_error(format!("invalid topic name {topic:?}")));
        }
        if let Err(limit) = self.broker.limits().topics.check(&publish.topic) {
            self.broker.stats().limit_refused(limit.into());
            return Some(self.protocol_error(format!("PUBLISH {limit}")));
        }
        let stats = self.broker.stats();
        stats.received(publish.qos, publish.payload.len());
        if !self.allowed(Action::Publish, &publish.topic) {
            return self.acknowledge_denied(&publish);
        }
        let mut message = Message::new(publish.topic, publish.payload, publish.qos, publish.retain);
        message.properties = properties;
        if self.has_no_local {
            message.publisher = Some(self.client_id.clone());
        }
        let (ack, id) = match (publish.qos, publish.packet_id) {
            (Qos::AtMostOnce, _) => {
                // At most once: a failed store or forward is not retried.
                let _ = self.broker.publish(Arc::new(message), None).await;
                return None;
            }
            (Qos::AtLeastOnce, Some(id)) => (Ack::Puback, id),
            (Qos::ExactlyOnce, Some(id)) => (Ack::Pubrec, id),
            (_, None) => return Some(self.protocol_error("QoS 1/2 PUBLISH without id".into())),
        };
        let mut origin = None;
        if ack == Ack::Pubrec {
            match self.incoming_qos2.get(&id) {
                // A re-sent QoS 2 PUBLISH of a message already received is
                // only acknowledged again: exactly once (MQTT-4.3.3-2).
                Some(IncomingQos2 {
                    fanned_out: true, ..
                }) => {
                    self.owed.push(ack, id, reason::SUCCESS, Durability::Done);
                    return None;
                }
                // Received by a node that died before it finished the
                // fan-out: run it again under the same publish id, which
                // every queue and node that has it refuses.
                Some(IncomingQos2 { publish_id, .. }) => message.publish_id = publish_id.clone(),
                // Every QoS 2 publish in a cluster gets an id, so a node that
                // re-reads an inbox entry (after a death) cannot queue it twice.
                None if self.broker.cluster().is_some() => {
                    message.publish_id = Some(self.broker.new_publish_id())
                }
                None => {}
            }
            if self.durable {
                origin = Some(Qos2Origin {
                    owner: self.owner.clone(),
                    packet_id: id,
                });
            }
        }
        let publish_id = message.publish_id.clone();
        match self.broker.publish(Arc::new(message), origin).await {
            Ok(durability) => {
                if ack == Ack::Pubrec {
                    let record = IncomingQos2 {
                        publish_id,
                        fanned_out: true,
                    };
                    self.incoming_qos2.insert(id, record);
                }
                self.owed.push(ack, id, reason::SUCCESS, durability);
                None
            }
            Err(error) => Some(End::StoreUnavailable(error.to_string())),
        }
    }

    /// The 5.0 rules of an incoming PUBLISH beyond the topic: the node's
    /// Receive Maximum (0x93), a payload marked UTF-8 that is not (0x99:
    /// refused, not delivered), a response topic that is a topic name.
    /// `Some` ends the session, or (`Some(None)`) only skips the message.
    fn check_v5_publish(
        &mut self,
        publish: &PublishPacket,
        p: &PublishProperties,
    ) -> Option<Option<End>> {
        // A re-sent QoS 2 PUBLISH the node holds already is not one more.
        let held = publish.qos == Qos::ExactlyOnce
            && publish
                .packet_id
                .is_some_and(|id| self.incoming_qos2.contains_key(&id));
        if publish.qos != Qos::AtMostOnce && !held {
            let unacknowledged = self.owed.pubacks() + self.incoming_qos2.len();
            if unacknowledged >= usize::from(RECEIVE_MAXIMUM) {
                let why = format!("more than {RECEIVE_MAXIMUM} unacknowledged QoS 1/2 PUBLISH");
                return Some(Some(self.violation(reason::RECEIVE_MAXIMUM_EXCEEDED, why)));
            }
        }
        if let Some(topic) = &p.response_topic {
            if !is_valid_topic_name(topic) {
                let why = "response topic is not a topic name".to_owned();
                return Some(Some(self.protocol_error(why)));
            }
        }
        if p.is_utf8_payload && std::str::from_utf8(&publish.payload).is_err() {
            self.broker.stats().protocol_errors.inc();
            return Some(self.refuse_publish(publish, reason::PAYLOAD_FORMAT_INVALID));
        }
        None
    }

    /// Refuses a PUBLISH with a 5.0 reason code: QoS 1/2 get it in their
    /// PUBACK/PUBREC, QoS 0 (which has no answer) a DISCONNECT.
    fn refuse_publish(&mut self, publish: &PublishPacket, code: u8) -> Option<End> {
        let ack = match publish.qos {
            Qos::AtMostOnce => {
                let why = format!("PUBLISH refused with {code:#04x}");
                return Some(self.violation(code, why));
            }
            Qos::AtLeastOnce => Ack::Puback,
            Qos::ExactlyOnce => Ack::Pubrec,
        };
        let Some(id) = publish.packet_id else {
            return Some(self.protocol_error("QoS 1/2 PUBLISH without id".into()));
        };
        self.owed.push(ack, id, code, Durability::Done);
        None
    }

    /// Whether the ACL (if any) lets this client do `action` on `topic`.
    /// Without `--acl-file` nothing is looked at.
    fn allowed(&self, action: Action, topic: &str) -> bool {
        let Some(acl) = self.broker.acl() else {
            return true;
        };
        let who = Identity {
            user: self.user.as_deref(),
            client: &self.client_id,
        };
        match action {
            Action::Publish => acl.may_publish(who, topic),
            Action::Subscribe => acl.may_subscribe(who, topic),
        }
    }

    /// A PUBLISH the ACL denies: counted, neither delivered nor retained,
    /// and acknowledged as usual (3.1.1 cannot refuse a PUBLISH; 5.0 says
    /// 0x87 in the PUBACK/PUBREC, and a QoS 0 one is dropped silently).
    fn acknowledge_denied(&mut self, publish: &PublishPacket) -> Option<End> {
        self.broker.stats().acl_denied(AclDenial::Publish);
        tracing::debug!(topic = %untrusted(&publish.topic), "PUBLISH denied by the ACL");
        let ack = match publish.qos {
            Qos::AtMostOnce => return None,
            Qos::AtLeastOnce => Ack::Puback,
            Qos::ExactlyOnce => Ack::Pubrec,
        };
        let Some(id) = publish.packet_id else {
            return Some(self.protocol_error("QoS 1/2 PUBLISH without id".into()));
        };
        let code = match self.v5 {
            Some(_) => reason::NOT_AUTHORIZED,
            None => reason::SUCCESS,
        };
        self.owed.push(ack, id, code, Durability::Done);
        None
    }

    /// Sends the acknowledgements whose messages are safe, in order; a
    /// failed write ends the session unacknowledged (the client re-sends).
    pub(super) fn release_acks(&mut self) -> Option<End> {
        while let Some(settled) = self.owed.pop_settled() {
            if !settled.written {
                return Some(self.unwritten(settled));
            }
            if let Err(error) = self.encode_ack(settled.ack, settled.packet_id, settled.code) {
                return Some(self.protocol_error(error.to_string()));
            }
        }
        None
    }

    /// Forgets an incoming QoS 2 id whose message was not written, so the
    /// client's re-send is published rather than dropped as a duplicate.
    pub(super) fn unwritten(&mut self, settled: Settled) -> End {
        if settled.ack == Ack::Pubrec {
            self.incoming_qos2.remove(&settled.packet_id);
        }
        End::StoreUnavailable("message not written to Redis".into())
    }

    /// Subscribes, answers SUBACK and queues the retained messages the new
    /// subscriptions get; `Some` ends the session (a protocol error).
    pub(super) async fn on_subscribe(
        &mut self,
        packet_id: u16,
        filters: Vec<(String, Qos)>,
        v5: Option<Box<SubscribeV5>>,
    ) -> Option<End> {
        let mut granted = Vec::with_capacity(filters.len());
        let mut accepted: Vec<(String, Subscription)> = Vec::with_capacity(filters.len());
        let mut retained_for: Vec<(String, Subscription)> = Vec::with_capacity(filters.len());
        for (index, (filter, requested)) in filters.into_iter().enumerate() {
            let options = v5.as_ref().and_then(|v5| v5.options.get(index));
            let subscription = Subscription {
                qos: requested,
                no_local: options.is_some_and(|o| o.no_local),
                retain_as_published: options.is_some_and(|o| o.retain_as_published),
                id: v5.as_ref().and_then(|v5| v5.subscription_id),
            };
            let share = match shared::parse(&filter) {
                Ok(share) => share,
                Err(_) => {
                    granted.push(Err(reason::TOPIC_FILTER_INVALID));
                    continue;
                }
            };
            // The topics a subscription receives: a shared one's filter.
            let topics = share.as_ref().map_or(filter.as_str(), |s| s.filter);
            if !is_valid_filter(topics) {
                granted.push(Err(reason::TOPIC_FILTER_INVALID));
                continue;
            }
            if share.is_some() {
                if subscription.no_local {
                    let why = "No Local on a shared subscription".to_owned();
                    return Some(self.protocol_error(why));
                }
                if !self.broker.serves_shared_subscriptions() {
                    granted.push(Err(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED));
                    continue;
                }
            }
            if !self.within_limits(&filter) {
                granted.push(Err(reason::QUOTA_EXCEEDED));
                continue;
            }
            if !self.allowed(Action::Subscribe, topics) {
                self.broker.stats().acl_denied(AclDenial::Subscribe);
                tracing::debug!(filter = %untrusted(&filter), "SUBSCRIBE denied by the ACL");
                granted.push(Err(reason::NOT_AUTHORIZED));
                continue;
            }
            let existed = self.subscriptions.contains_key(&filter);
            self.broker
                .subscribe(&self.client_id, &filter, subscription)
                .await;
            self.subscriptions.insert(filter.clone(), subscription);
            granted.push(Ok(requested));
            // 5.0 Retain Handling: 0 always, 1 only for a new
            // subscription, 2 never (5.0 §3.8.3.1); a shared subscription
            // gets none (5.0 §4.8.2).
            let send_retained = share.is_none()
                && match options.map(|o| o.retain_handling) {
                    None | Some(RetainHandling::AtSubscribe) => true,
                    Some(RetainHandling::AtSubscribeNew) => !existed,
                    Some(RetainHandling::NoAtSubscribe) => false,
                };
            if send_retained {
                retained_for.push((filter.clone(), subscription));
            }
            accepted.push((filter, subscription));
        }
        self.refresh_no_local();
        self.persist_subscriptions(&accepted, &[]).await;
        if let Err(error) = self.encode_suback(packet_id, &granted) {
            tracing::warn!(%error, "SUBACK not encoded");
        }
        self.queue_retained(&retained_for).await;
        None
    }

    /// Notes whether any subscription is No Local (see `has_no_local`).
    pub(super) fn refresh_no_local(&mut self) {
        self.has_no_local = self.subscriptions.values().any(|s| s.no_local);
    }

    /// Appends a SUBACK: per filter the granted QoS or, refused, 3.1.1's
    /// 0x80 or 5.0's reason code.
    fn encode_suback(
        &mut self,
        packet_id: u16,
        granted: &[Result<Qos, u8>],
    ) -> Result<(), EncodeError> {
        let out = self.connection.output();
        match self.v5 {
            Some(_) => {
                let codes: Vec<u8> = granted
                    .iter()
                    .map(|g| g.map_or_else(|code| code, Qos::as_u8))
                    .collect();
                encode_suback_v5(out, packet_id, &codes)
            }
            None => {
                let granted: Vec<Option<Qos>> = granted.iter().map(|g| g.ok()).collect();
                encode_suback(out, packet_id, &granted)
            }
        }
    }

    /// True when this session may hold `filter`: within the topic limits
    /// and, if new to it, within `max-subscriptions-per-client`. A refusal
    /// is counted.
    fn within_limits(&self, filter: &str) -> bool {
        let limits = &self.broker.limits();
        let refused = match limits.topics.check(filter) {
            Err(limit) => limit.into(),
            Ok(())
                if !self.subscriptions.contains_key(filter)
                    && self.subscriptions.len() >= limits.max_subscriptions_per_client =>
            {
                LimitReason::SubscriptionsPerClient
            }
            Ok(()) => return true,
        };
        self.broker.stats().limit_refused(refused);
        false
    }

    /// Removes subscriptions; returns the 5.0 reason code of each filter
    /// (0x00 removed, 0x11 it was not subscribed, 0x8F not a filter).
    pub(super) async fn on_unsubscribe(&mut self, filters: Vec<String>) -> Vec<u8> {
        let codes = filters
            .iter()
            .map(
                |f| match (is_valid_filter(f), self.subscriptions.contains_key(f)) {
                    (false, _) => reason::TOPIC_FILTER_INVALID,
                    (true, true) => reason::SUCCESS,
                    (true, false) => reason::NO_SUBSCRIPTION_EXISTED,
                },
            )
            .collect();
        // An invalid filter was never subscribed: nothing to remove. One
        // over the topic limits cannot have been, unless the session holds it
        // from before the limits were lowered.
        let valid = filters.iter().filter(|f| {
            is_valid_filter(f)
                && (self.broker.limits().topics.check(f).is_ok()
                    || self.subscriptions.contains_key(*f))
        });
        self.broker
            .unsubscribe(&self.client_id, valid.map(String::as_str))
            .await;
        for filter in &filters {
            self.subscriptions.remove(filter);
        }
        self.refresh_no_local();
        self.persist_subscriptions(&[], &filters).await;
        codes
    }

    /// Removes from a resumed session's subscriptions those the ACL now
    /// denies (the rules may have changed since they were granted, here or
    /// on another node): out of the subscription tree and the store.
    pub(super) async fn drop_denied_subscriptions(
        &self,
        subscriptions: &mut HashMap<String, Subscription>,
    ) {
        if self.broker.acl().is_none() {
            return;
        }
        let denied: Vec<String> = subscriptions
            .keys()
            .filter(|f| !self.allowed(Action::Subscribe, f))
            .cloned()
            .collect();
        if denied.is_empty() {
            return;
        }
        for filter in &denied {
            subscriptions.remove(filter);
            self.broker.stats().acl_denied(AclDenial::Subscribe);
        }
        tracing::debug!(
            dropped = denied.len(),
            "resumed subscriptions denied by the ACL"
        );
        // An offline session's subscriptions are still in the tree (and its
        // routes announced): take them out, not only out of the session.
        self.broker
            .unsubscribe(&self.client_id, denied.iter().map(String::as_str))
            .await;
        self.persist_subscriptions(&[], &denied).await;
    }

    /// Writes subscription changes of a persistent session through to the
    /// store, so they outlive this node.
    async fn persist_subscriptions(&self, added: &[(String, Subscription)], removed: &[String]) {
        if self.clean_session {
            return;
        }
        let store = &self.broker.store();
        if let Err(error) = store
            .update_subscriptions(&self.owner, added, removed)
            .await
        {
            tracing::warn!(%error, client_id = %untrusted(&self.client_id), "subscription change not persisted");
        }
    }

    /// Queues the retained messages matching new subscriptions, each once at
    /// the best QoS granted among the filters that match it, with their
    /// subscription identifiers.
    async fn queue_retained(&mut self, accepted: &[(String, Subscription)]) {
        if accepted.is_empty() {
            return;
        }
        let filters: Vec<&str> = accepted.iter().map(|(f, _)| f.as_str()).collect();
        let retained = match self.broker.store().retained_matching(&filters).await {
            Ok(retained) => retained,
            Err(error) => {
                tracing::warn!(%error, "retained messages not read");
                return;
            }
        };
        let now_ms = unix_millis();
        let deliveries: Vec<Delivery> = retained
            .into_iter()
            .filter(|message| !message.is_expired(now_ms))
            .filter_map(|message| {
                let mut matching = accepted
                    .iter()
                    .filter(|(f, _)| filter_matches(f, &message.topic))
                    .map(|(_, s)| s);
                let mut matched = Matched::of(matching.next()?);
                matching.for_each(|s| matched.add(s));
                let mut delivery = Delivery::retained(message, matched.qos);
                delivery.subscription_ids = matched.ids;
                Some(delivery)
            })
            .collect();
        let deliveries = self.queue_durably(deliveries).await;
        self.pending.extend(deliveries);
    }

    /// A persistent session in a cluster queues its retained deliveries in
    /// Redis before sending them, as every other QoS 1/2 delivery is, so a
    /// survivor re-sends them if this node dies before the client has
    /// acknowledged them. If Redis cannot take them they are sent from
    /// memory (no worse than a clean session).
    async fn queue_durably(&mut self, deliveries: Vec<Delivery>) -> Vec<Delivery> {
        if !self.durable || deliveries.iter().all(|d| d.qos == Qos::AtMostOnce) {
            return deliveries;
        }
        let store = self.broker.store();
        match store
            .queue_for_session(&self.client_id, deliveries.clone())
            .await
        {
            // Not a read of the whole queue: the read mark stays (a late
            // drain knows these entries from `pending` and the window).
            Ok(queued) => queued,
            Err(error) => {
                tracing::warn!(%error, client_id = %untrusted(&self.client_id), "retained deliveries not queued in Redis");
                deliveries
            }
        }
    }
}
