//! Keep-alive: PINGREQ/PINGRESP and disconnecting idle clients after 1.5×
//! the keep-alive interval (MQTT 3.1.1 section 3.1.2.10).

use std::time::Duration;

use anyhow::{ensure, Result};
use astramq_tests::wire::Connect;
use astramq_tests::{unique_id, NodeProcess, RawClient};

/// PINGREQ is answered with exactly `D0 00`, repeatedly.
#[tokio::test]
async fn pingreq_gets_pingresp() -> Result<()> {
    let node = NodeProcess::start()?;
    let (mut client, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("ping"))).await?;
    for _ in 0..3 {
        client.send(&[0xC0, 0x00]).await?;
        let response = client.recv().await?;
        ensure!(
            response.first_byte == 0xD0 && response.body.is_empty(),
            "got {response:?}"
        );
    }
    Ok(())
}

/// A client with keep-alive 1 s that goes silent is dropped after ~1.5 s.
#[tokio::test]
async fn idle_client_is_disconnected_after_one_and_a_half_keep_alives() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("idle")).with_keep_alive(1);
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    let took = client.expect_closed(Duration::from_secs(4)).await?;
    ensure!(
        took >= Duration::from_secs(1),
        "closed after {took:?}, before the keep-alive expired"
    );
    Ok(())
}

/// A client that pings within its keep-alive stays connected past 1.5×.
#[tokio::test]
async fn pinging_client_stays_connected_past_the_keep_alive() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("alive")).with_keep_alive(1);
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.ping().await?;
    }
    Ok(())
}
