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

/// A cluster node that cannot reach Redis keeps retrying, and still exits
/// with 0 on SIGTERM instead of waiting for Redis.
#[tokio::test]
async fn sigterm_while_redis_is_unreachable_exits_zero() -> Result<()> {
    let port = astramq_tests::redis::free_port()?;
    let mut child = std::process::Command::new(astramq_tests::binary::node_binary()?)
        .args(["--listen", "127.0.0.1:0", "--allow-anonymous", "true"])
        .args(["--redis", &format!("redis://127.0.0.1:{port}")])
        .args(["--redis-timeout-ms", "200"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        child.try_wait()?.is_none(),
        "the node exited before SIGTERM"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let deadline = std::time::Instant::now() + SHUTDOWN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "still running {SHUTDOWN_LIMIT:?} after SIGTERM while Redis is unreachable"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(status.code() == Some(0), "node exited with {status}");
    Ok(())
}
