//! Graceful shutdown: SIGTERM makes the node close its connections and exit
//! with status 0 promptly.

use std::time::Duration;

use anyhow::{ensure, Result};
use astramq_tests::wire::Connect;
use astramq_tests::{unique_id, NodeProcess, RawClient, TestClient, TIMEOUT};

/// How long the node may take to shut down after SIGTERM.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// With clients connected, SIGTERM closes them and the node exits with 0.
#[tokio::test]
async fn sigterm_closes_connections_and_exits_zero() -> Result<()> {
    let mut node = NodeProcess::start()?;
    let (mut raw, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("raw"))).await?;
    let mut client = TestClient::connect(node.addr(), &unique_id("lib")).await?;
    client
        .subscribe("shutdown/t", rumqttc::QoS::AtLeastOnce)
        .await?;

    node.terminate()?;
    let status = node.wait_for_exit(SHUTDOWN_LIMIT).await?;
    ensure!(
        status.code() == Some(0),
        "node exited with {status} after SIGTERM"
    );
    raw.expect_closed(TIMEOUT).await?;
    client.wait_closed().await?;
    Ok(())
}

/// An idle node also exits with 0 on SIGTERM.
#[tokio::test]
async fn sigterm_on_idle_node_exits_zero() -> Result<()> {
    let mut node = NodeProcess::start()?;
    node.terminate()?;
    let status = node.wait_for_exit(SHUTDOWN_LIMIT).await?;
    ensure!(
        status.code() == Some(0),
        "node exited with {status} after SIGTERM"
    );
    Ok(())
}
