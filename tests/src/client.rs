//! [`TestClient`]: the independent `rumqttc` client, made step-by-step testable.
//!
//! `rumqttc` is driven by polling its event loop. A background task (the
//! "pump") polls it and forwards every event into a channel; test code then
//! awaits the specific event a step needs (a SUBACK, the PUBACK for its own
//! publish, the next PUBLISH), each bounded by [`TIMEOUT`]. Publishes that
//! arrive while waiting for something else are kept in an inbox so that no
//! delivery is ever lost or double-counted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use rumqttc::{
    AsyncClient, ConnAck, Event, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::TIMEOUT;

/// Capacity of the request channel between the test and the event loop.
const REQUEST_CAPACITY: usize = 64;

/// Keep-alive used unless a test sets its own: long enough that pings never
/// interleave with what a test asserts, short enough to be realistic.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// What the pump saw.
enum Observed {
    /// An event from the event loop.
    Event(Event),
    /// The event loop failed (connection closed, refused, ...); the pump stops.
    Closed(String),
}

/// A connected `rumqttc` client.
pub struct TestClient {
    /// Handle used to queue requests (publish, subscribe, ...).
    client: AsyncClient,
    /// Events forwarded by the pump, in order.
    events: mpsc::UnboundedReceiver<Observed>,
    /// The pump task; aborted on drop, which closes the connection.
    pump: JoinHandle<()>,
    /// Publishes received while a step waited for some other event.
    inbox: VecDeque<Publish>,
    /// The CONNACK that opened this connection.
    connack: ConnAck,
    /// Set once the connection is known to be closed.
    closed: Option<String>,
    /// The client id, so errors say which of a test's clients failed.
    id: String,
}

impl TestClient {
    /// Default options: clean session, 30 s keep-alive, plain TCP.
    pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(DEFAULT_KEEP_ALIVE);
        options
    }

    /// Connects with default options.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Result<Self> {
        Self::connect_with(Self::options(addr, client_id)).await
    }

    /// Connects with the given options and waits for an accepting CONNACK.
    pub async fn connect_with(options: MqttOptions) -> Result<Self> {
        let id = options.client_id();
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (tx, events) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                let observed = match eventloop.poll().await {
                    Ok(event) => Observed::Event(event),
                    Err(e) => Observed::Closed(e.to_string()),
                };
                let stop = matches!(observed, Observed::Closed(_));
                if tx.send(observed).is_err() || stop {
                    return;
                }
            }
        });
        let connack = ConnAck {
            session_present: false,
            code: rumqttc::ConnectReturnCode::Success,
        };
        let mut this = Self {
            client,
            events,
            pump,
            inbox: VecDeque::new(),
            connack,
            closed: None,
            id,
        };
        this.connack = this
            .wait_for("CONNACK", |event| match event {
                Event::Incoming(Packet::ConnAck(ack)) => Some(ack.clone()),
                _ => None,
            })
            .await?;
        Ok(this)
    }

    /// The session-present flag of the CONNACK.
    pub fn session_present(&self) -> bool {
        self.connack.session_present
    }

    /// The underlying handle, for requests this wrapper does not cover.
    pub fn handle(&self) -> &AsyncClient {
        &self.client
    }

    /// Receives the next event, or fails on timeout or a closed connection.
    async fn next_event(&mut self, what: &str) -> Result<Event> {
        if let Some(reason) = &self.closed {
            return Err(anyhow!(
                "connection closed ({reason}) while waiting for {what}"
            ));
        }
        let observed = tokio::time::timeout(TIMEOUT, self.events.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "{}: timed out after {TIMEOUT:?} waiting for {what}",
                    self.id
                )
            })?;
        match observed {
            Some(Observed::Event(event)) => Ok(event),
            Some(Observed::Closed(reason)) => {
                self.closed = Some(reason.clone());
                Err(anyhow!(
                    "connection closed ({reason}) while waiting for {what}"
                ))
            }
            None => Err(anyhow!(
                "{}: event pump stopped while waiting for {what}",
                self.id
            )),
        }
    }

    /// Waits for the first event `pick` accepts; incoming publishes that it
    /// does not accept go to the inbox.
    async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T> {
        loop {
            let event = self.next_event(what).await?;
            if let Some(found) = pick(&event) {
                return Ok(found);
            }
            if let Event::Incoming(Packet::Publish(publish)) = event {
                self.inbox.push_back(publish);
            }
        }
    }

    /// Subscribes to one filter and returns the granted QoS (or failure).
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<SubscribeReasonCode> {
        let codes = self.subscribe_many(&[(filter, qos)]).await?;
        Ok(codes[0])
    }

    /// Subscribes to several filters in one SUBSCRIBE; returns the SUBACK codes.
    pub async fn subscribe_many(
        &mut self,
        filters: &[(&str, QoS)],
    ) -> Result<Vec<SubscribeReasonCode>> {
        let request = filters
            .iter()
            .map(|(filter, qos)| rumqttc::SubscribeFilter::new((*filter).to_owned(), *qos));
        self.client.subscribe_many(request).await?;
        let codes = self
            .wait_for("SUBACK", |event| match event {
                Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await?;
        ensure!(
            codes.len() == filters.len(),
            "SUBACK has {} codes for {} filters",
            codes.len(),
            filters.len()
        );
        Ok(codes)
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) -> Result<()> {
        self.client.unsubscribe(filter).await?;
        self.wait_for("UNSUBACK", |event| {
            matches!(event, Event::Incoming(Packet::UnsubAck(_))).then_some(())
        })
        .await
    }

    /// Publishes and waits until the exchange completes: written (QoS 0),
    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) from the node.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<()> {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await?;
        let id = self
            .wait_for("our PUBLISH to be sent", |event| match event {
                Event::Outgoing(Outgoing::Publish(id)) => Some(*id),
                _ => None,
            })
            .await?;
        self.wait_for_completion(qos, id).await
    }

    /// Waits for the node's final acknowledgement of our publish `id`.
    async fn wait_for_completion(&mut self, qos: QoS, id: u16) -> Result<()> {
        match qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |event| match event {
                    Event::Incoming(Packet::PubAck(ack)) => (ack.pkid == id).then_some(()),
                    _ => None,
                })
                .await
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |event| match event {
                    Event::Incoming(Packet::PubComp(comp)) => (comp.pkid == id).then_some(()),
                    _ => None,
                })
                .await
            }
        }
    }

    /// Publishes all `payloads` to `topic` pipelined (without waiting for each
    /// ack), then waits until the node has acknowledged every one.
    pub async fn publish_many(
        &mut self,
        topic: &str,
        qos: QoS,
        payloads: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<()> {
        let mut count = 0usize;
        for payload in payloads {
            self.client.publish(topic, qos, false, payload).await?;
            count += 1;
        }
        let mut completed = 0usize;
        while completed < count {
            completed += self
                .wait_for("acknowledgements of pipelined publishes", |event| {
                    match (qos, event) {
                        (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_)))
                        | (QoS::AtLeastOnce, Event::Incoming(Packet::PubAck(_)))
                        | (QoS::ExactlyOnce, Event::Incoming(Packet::PubComp(_))) => Some(1),
                        _ => None,
                    }
                })
                .await?;
        }
        Ok(())
    }

    /// The next application message delivered to this client.
    pub async fn next_publish(&mut self) -> Result<Publish> {
        if let Some(publish) = self.inbox.pop_front() {
            return Ok(publish);
        }
        self.wait_for("a PUBLISH", |event| match event {
            Event::Incoming(Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await
    }

    /// The next message if one arrives within `limit`, else `None`.
    pub async fn next_publish_within(&mut self, limit: Duration) -> Result<Option<Publish>> {
        if let Some(publish) = self.inbox.pop_front() {
            return Ok(Some(publish));
        }
        match tokio::time::timeout(limit, self.next_publish()).await {
            Err(_) => Ok(None),
            Ok(result) => result.map(Some),
        }
    }

    /// The next `count` application messages, in arrival order.
    pub async fn publishes(&mut self, count: usize) -> Result<Vec<Publish>> {
        let mut received = Vec::with_capacity(count);
        while received.len() < count {
            received.push(self.next_publish().await?);
        }
        Ok(received)
    }

    /// Every message received before the first one on `sentinel` (which is
    /// consumed). Publishing a sentinel after the messages under test shows
    /// the node has routed them, without guessing at a delay.
    pub async fn publishes_until(&mut self, sentinel: &str) -> Result<Vec<Publish>> {
        let mut received = Vec::new();
        loop {
            let publish = self.next_publish().await?;
            if publish.topic == sentinel {
                return Ok(received);
            }
            received.push(publish);
        }
    }

    /// Requires that no message is delivered for `period`.
    pub async fn expect_no_publish(&mut self, period: Duration) -> Result<()> {
        match self.next_publish_within(period).await? {
            None => Ok(()),
            Some(publish) => Err(anyhow!("expected no message, got {publish:?}")),
        }
    }

    /// Waits until the node closes this connection; returns the reason seen.
    pub async fn wait_closed(&mut self) -> Result<String> {
        loop {
            match self.next_event("the connection to close").await {
                Ok(Event::Incoming(Packet::Publish(publish))) => self.inbox.push_back(publish),
                Ok(_) => {}
                Err(e) => return self.closed.clone().ok_or(e),
            }
        }
    }

    /// Sends DISCONNECT, waits until it is on the wire, then drops the connection.
    pub async fn disconnect(mut self) -> Result<()> {
        self.client.disconnect().await?;
        self.wait_for("DISCONNECT to be sent", |event| {
            matches!(event, Event::Outgoing(Outgoing::Disconnect)).then_some(())
        })
        .await
    }
}

impl Drop for TestClient {
    /// Stops the pump, which drops the event loop and closes the socket.
    fn drop(&mut self) {
        self.pump.abort();
    }
}
