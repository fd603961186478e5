//! PROXY protocol v2 in front of MQTT: accepted from a trusted load
//! balancer (which must then always send it), refused from anyone else.

use anyhow::{ensure, Result};
use astramq_tests::wire::Connect;
use astramq_tests::{assert_serves_clients, unique_id, within, NodeProcess, RawClient, TIMEOUT};

/// A v2 PROXY header for a TCP/IPv4 client 192.0.2.7:12345.
fn proxy_v2_header() -> Vec<u8> {
    let mut header = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    header.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
    header.extend_from_slice(&[192, 0, 2, 7, 127, 0, 0, 1, 0x30, 0x39, 0x07, 0x5B]);
    header
}

/// From a trusted address, the header is read and the MQTT session follows.
#[tokio::test]
async fn trusted_proxy_header_is_accepted() -> Result<()> {
    let node = NodeProcess::start_with(&[("--trusted-proxies", "127.0.0.1")])?;
    let mut client = RawClient::connect_tcp(node.addr()).await?;
    let mut bytes = proxy_v2_header();
    bytes.extend_from_slice(&Connect::new(&unique_id("behind-proxy")).encode());
    client.send(&bytes).await?;
    let connack = within("CONNACK", client.recv()).await??.connack()?;
    ensure!(connack.code == 0, "refused: {connack:?}");
    client.ping().await
}

/// A trusted proxy must send the header: a bare CONNECT is refused.
#[tokio::test]
async fn trusted_peer_without_header_is_closed() -> Result<()> {
    let mut node = NodeProcess::start_with(&[("--trusted-proxies", "127.0.0.1")])?;
    let mut client = RawClient::connect_tcp(node.addr()).await?;
    client
        .send(&Connect::new(&unique_id("bare")).encode())
        .await?;
    client.expect_closed(TIMEOUT).await?;
    node.assert_running()
}

/// From an untrusted address the header is malformed MQTT.
#[tokio::test]
async fn untrusted_peer_cannot_claim_another_address() -> Result<()> {
    let mut node = NodeProcess::start()?;
    let mut client = RawClient::connect_tcp(node.addr()).await?;
    let mut bytes = proxy_v2_header();
    bytes.extend_from_slice(&Connect::new(&unique_id("spoofer")).encode());
    client.send(&bytes).await?;
    client.expect_closed(TIMEOUT).await?;
    assert_serves_clients(&mut node).await
}
