//! [`Bystander`]: a subscriber and a publisher on a topic of their own,
//! connected before a hostile step; [`Bystander::still_served`] proves
//! afterwards that the node (or the proxy in front of it) still carries
//! their messages, in order.

use std::net::SocketAddr;

use anyhow::{ensure, Result};
use rumqttc::{QoS, SubscribeReasonCode};

use crate::{unique_id, TestClient};

/// Two well-behaved clients that must keep working whatever else happens.
pub struct Bystander {
    subscriber: TestClient,
    publisher: TestClient,
    topic: String,
    sent: usize,
}

impl Bystander {
    /// Connects both clients to `addr` and subscribes at QoS 1.
    pub async fn join(addr: SocketAddr) -> Result<Self> {
        let topic = format!("bystander/{}", unique_id("t"));
        let mut subscriber = TestClient::connect(addr, &unique_id("by-sub")).await?;
        let granted = subscriber.subscribe(&topic, QoS::AtLeastOnce).await?;
        ensure!(granted == SubscribeReasonCode::Success(QoS::AtLeastOnce));
        let publisher = TestClient::connect(addr, &unique_id("by-pub")).await?;
        Ok(Self {
            subscriber,
            publisher,
            topic,
            sent: 0,
        })
    }

    /// Publishes the next message and requires it to arrive, in order.
    pub async fn still_served(&mut self) -> Result<()> {
        self.sent += 1;
        let payload = format!("m{}", self.sent);
        self.publisher
            .publish(&self.topic, QoS::AtLeastOnce, false, payload.clone())
            .await?;
        let got = self.subscriber.next_publish().await?;
        ensure!(
            got.payload.as_ref() == payload.as_bytes(),
            "bystander got {:?}, expected {payload}",
            got.payload
        );
        Ok(())
    }
}
