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

/// Keep-alive of the idle-client test, in seconds.
const KEEP_ALIVE_SECS: u16 = 1;

/// How much earlier than 1.5 × keep-alive the close may be seen: the node
/// starts its clock when its session loop starts, a little before the test
/// has read the CONNACK and starts its own.
const EARLY_TOLERANCE: Duration = Duration::from_millis(100);

/// How much later than 1.5 × keep-alive the close may come: timer and
/// scheduling delays on a loaded test machine, not a second keep-alive.
const LATE_TOLERANCE: Duration = Duration::from_millis(1500);

/// A client with keep-alive 1 s that goes silent is disconnected once it
/// has sent nothing for one and a half times its keep-alive. MQTT 3.1.1
/// section 3.1.2.10 [MQTT-3.1.2-24]: "If the Keep Alive value is non-zero
/// and the Server does not receive a Control Packet from the Client within
/// one and a half times the Keep Alive time period, it MUST disconnect the
/// Network Connection to the Client". So the close comes at 1.5 s: not at
/// 1 s, and not much later.
#[tokio::test]
async fn idle_client_is_disconnected_after_one_and_a_half_keep_alives() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("idle")).with_keep_alive(KEEP_ALIVE_SECS);
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    let due = Duration::from_secs(u64::from(KEEP_ALIVE_SECS)) * 3 / 2;
    let took = client
        .expect_closed(due + LATE_TOLERANCE + Duration::from_secs(1))
        .await?;
    ensure!(
        took + EARLY_TOLERANCE >= due,
        "closed after {took:?}, before 1.5 × the keep-alive ({due:?})"
    );
    ensure!(
        took <= due + LATE_TOLERANCE,
        "closed after {took:?}, more than {LATE_TOLERANCE:?} after 1.5 × the keep-alive ({due:?})"
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
