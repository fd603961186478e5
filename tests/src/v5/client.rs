//! [`Client5`]: a byte-level MQTT 5.0 client over [`RawClient`].
//!
//! It sends exactly the packets a test builds and decodes what the node
//! sends with [`Packet5::decode`]; it never acknowledges on its own, so a
//! test can withhold acks. Messages that arrive while a step waits for
//! something else are kept in an inbox, in order. Every read is bounded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::packet::{self, Ack5, ConnAck5, Connect5, Disconnect5, Packet5, Publish5, SubAck5};
use super::props::Properties;
use crate::wire::kind;
use crate::{RawClient, TIMEOUT};

/// A 5.0 connection to the node.
pub struct Client5 {
    /// The byte-level connection.
    raw: RawClient,
    /// PUBLISHes received while waiting for another packet.
    inbox: VecDeque<Publish5>,
    /// The CONNACK that opened the connection.
    pub connack: ConnAck5,
}

impl Client5 {
    /// Connects, sends `connect` and returns the client with the CONNACK,
    /// whatever its reason code.
    pub async fn handshake(addr: SocketAddr, connect: &Connect5) -> Result<Self> {
        let mut raw = RawClient::connect_tcp(addr).await?;
        raw.send(&connect.encode()).await?;
        let first = raw.recv().await.context("waiting for CONNACK")?;
        let Packet5::ConnAck(connack) = Packet5::decode(&first)? else {
            bail!("expected CONNACK, got {first:?}");
        };
        Ok(Self {
            raw,
            inbox: VecDeque::new(),
            connack,
        })
    }

    /// Like [`Self::handshake`], requiring reason code 0x00 (Success).
    pub async fn connect(addr: SocketAddr, connect: &Connect5) -> Result<Self> {
        let client = Self::handshake(addr, connect).await?;
        ensure!(
            client.connack.reason == 0,
            "CONNACK for {:?} refused: {:?}",
            connect.client_id,
            client.connack
        );
        Ok(client)
    }

    /// Session Present of the CONNACK.
    pub fn session_present(&self) -> bool {
        self.connack.session_present
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.raw.send(bytes).await
    }

    /// The next packet (an inbox PUBLISH first); fails after [`TIMEOUT`].
    pub async fn recv(&mut self) -> Result<Packet5> {
        match self.recv_for(TIMEOUT).await? {
            Some(packet) => Ok(packet),
            None => Err(anyhow!("no packet from the node within {TIMEOUT:?}")),
        }
    }

    /// The next packet, or `None` if none arrives within `limit`.
    pub async fn recv_for(&mut self, limit: Duration) -> Result<Option<Packet5>> {
        if let Some(publish) = self.inbox.pop_front() {
            return Ok(Some(Packet5::Publish(publish)));
        }
        match self.raw.recv_for(limit).await? {
            None => Ok(None),
            Some(raw) => Packet5::decode(&raw).map(Some),
        }
    }

    /// Reads from the wire (not the inbox) until `pick` accepts a packet,
    /// keeping PUBLISHes in the inbox; any other packet is an error.
    async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Packet5) -> Option<T>,
    ) -> Result<T> {
        loop {
            let raw = self
                .raw
                .recv()
                .await
                .with_context(|| format!("waiting for {what}"))?;
            let packet = Packet5::decode(&raw)?;
            if let Some(found) = pick(&packet) {
                return Ok(found);
            }
            match packet {
                Packet5::Publish(p) => self.inbox.push_back(p),
                other => bail!("waiting for {what}, got {other:?}"),
            }
        }
    }

    /// Sends `publish` (QoS 0) or waits for its PUBACK (QoS 1, returned) or
    /// PUBREC (QoS 2, returned; then PUBREL/PUBCOMP are exchanged unless the
    /// PUBREC refused it).
    pub async fn publish(&mut self, publish: &Publish5) -> Result<Option<Ack5>> {
        self.send(&publish.encode()).await?;
        if publish.qos == 0 {
            return Ok(None);
        }
        let want = if publish.qos == 1 {
            kind::PUBACK
        } else {
            kind::PUBREC
        };
        let id = publish.packet_id;
        let ack = self
            .wait_for("the ack of our PUBLISH", |p| match p {
                Packet5::Ack(a) if a.kind == want && a.packet_id == id => Some(a.clone()),
                _ => None,
            })
            .await?;
        if want == kind::PUBREC && ack.reason < 0x80 {
            self.send(&packet::pubrel(id)).await?;
            self.wait_for("PUBCOMP", |p| match p {
                Packet5::Ack(a) if a.kind == kind::PUBCOMP && a.packet_id == id => Some(()),
                _ => None,
            })
            .await?;
        }
        Ok(Some(ack))
    }

    /// Subscribes with `(filter, options)` pairs; returns the SUBACK.
    pub async fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Result<SubAck5> {
        self.subscribe_with(packet_id, &Properties::new(), filters)
            .await
    }

    /// Subscribes with SUBSCRIBE properties (a Subscription Identifier).
    pub async fn subscribe_with(
        &mut self,
        packet_id: u16,
        props: &Properties,
        filters: &[(&str, u8)],
    ) -> Result<SubAck5> {
        self.send(&packet::subscribe(packet_id, props, filters))
            .await?;
        let ack = self
            .wait_for("SUBACK", |p| match p {
                Packet5::SubAck(a) => Some(a.clone()),
                _ => None,
            })
            .await?;
        ensure!(ack.packet_id == packet_id, "SUBACK for another id: {ack:?}");
        Ok(ack)
    }

    /// Unsubscribes; returns the UNSUBACK.
    pub async fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) -> Result<SubAck5> {
        self.send(&packet::unsubscribe(packet_id, filters)).await?;
        let ack = self
            .wait_for("UNSUBACK", |p| match p {
                Packet5::UnsubAck(a) => Some(a.clone()),
                _ => None,
            })
            .await?;
        ensure!(
            ack.packet_id == packet_id,
            "UNSUBACK for another id: {ack:?}"
        );
        Ok(ack)
    }

    /// The next PUBLISH (inbox first), without acknowledging it.
    pub async fn recv_publish(&mut self) -> Result<Publish5> {
        match self.recv().await? {
            Packet5::Publish(p) => Ok(p),
            other => bail!("expected a PUBLISH, got {other:?}"),
        }
    }

    /// The next PUBLISH, acknowledged with PUBACK if it is QoS 1.
    pub async fn recv_publish_acked(&mut self) -> Result<Publish5> {
        let publish = self.recv_publish().await?;
        if publish.qos == 1 {
            self.send(&packet::puback(publish.packet_id)).await?;
        }
        Ok(publish)
    }

    /// Every PUBLISH (QoS 1 ones acknowledged) before the first one on
    /// `sentinel`, which is consumed.
    pub async fn publishes_until(&mut self, sentinel: &str) -> Result<Vec<Publish5>> {
        let mut seen = Vec::new();
        loop {
            let publish = self.recv_publish_acked().await?;
            if publish.topic == sentinel.as_bytes() {
                return Ok(seen);
            }
            seen.push(publish);
        }
    }

    /// Sends PINGREQ and waits for PINGRESP (PUBLISHes meanwhile are kept).
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&[0xC0, 0x00]).await?;
        self.wait_for("PINGRESP", |p| matches!(p, Packet5::PingResp).then_some(()))
            .await
    }

    /// Requires no packet for `period`.
    pub async fn expect_quiet(&mut self, period: Duration) -> Result<()> {
        match self.recv_for(period).await? {
            None => Ok(()),
            Some(packet) => Err(anyhow!("expected silence, got {packet:?}")),
        }
    }

    /// Requires the node to send a DISCONNECT (PUBLISHes before it are
    /// skipped) and then close the connection; returns the DISCONNECT.
    pub async fn expect_disconnect(&mut self) -> Result<Disconnect5> {
        let disconnect = loop {
            let raw = self
                .raw
                .recv()
                .await
                .context("waiting for the node's DISCONNECT")?;
            match Packet5::decode(&raw)? {
                Packet5::Disconnect(d) => break d,
                Packet5::Publish(_) => {}
                other => bail!("expected DISCONNECT, got {other:?}"),
            }
        };
        self.raw
            .expect_closed(TIMEOUT)
            .await
            .with_context(|| format!("no close after {disconnect:?}"))?;
        Ok(disconnect)
    }

    /// Requires a DISCONNECT with reason code `reason`, then the close.
    pub async fn expect_disconnect_reason(&mut self, reason: u8) -> Result<Disconnect5> {
        let got = self.expect_disconnect().await?;
        ensure!(
            got.reason == reason,
            "expected DISCONNECT {reason:#04x}, got {got:?}"
        );
        Ok(got)
    }

    /// Requires the node to close the connection within `limit`.
    pub async fn expect_closed(&mut self, limit: Duration) -> Result<Duration> {
        self.raw.expect_closed(limit).await
    }

    /// Sends a DISCONNECT with `reason` and `props`, then closes our side.
    pub async fn disconnect_with(&mut self, reason: u8, props: &Properties) -> Result<()> {
        self.send(&packet::disconnect(reason, props)).await?;
        self.raw.shutdown_write().await
    }

    /// A normal DISCONNECT (0x00), then the close.
    pub async fn disconnect(mut self) -> Result<()> {
        self.disconnect_with(0, &Properties::new()).await?;
        self.raw.expect_closed(TIMEOUT).await.map(|_| ())
    }
}
