//! Malformed input: each case must close the offending connection, and the
//! node must stay up and keep serving other clients afterwards.
//!
//! Byte strings are written out literally so each case can be read against
//! the specification without trusting any encoder.

use anyhow::Result;
use astramq_tests::wire::{Connect, Publish};
use astramq_tests::{assert_serves_clients, unique_id, NodeProcess, RawClient, TIMEOUT};

/// Sends `bytes` as the very first thing on a fresh connection.
async fn assert_rejected_before_connect(node: &mut NodeProcess, bytes: &[u8]) -> Result<()> {
    let mut client = RawClient::connect_tcp(node.addr()).await?;
    client.send(bytes).await?;
    client.expect_closed(TIMEOUT).await?;
    assert_serves_clients(node).await
}

/// Sends `bytes` after a successful CONNECT.
async fn assert_rejected_after_connect(node: &mut NodeProcess, bytes: &[u8]) -> Result<()> {
    let connect = Connect::new(&unique_id("bad"));
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    client.send(bytes).await?;
    client.expect_closed(TIMEOUT).await?;
    assert_serves_clients(node).await
}

/// A remaining length with five continuation bytes (the maximum is four).
#[tokio::test]
async fn remaining_length_over_four_bytes_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_before_connect(&mut node, &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await
}

/// A SUBSCRIBE before any CONNECT.
#[tokio::test]
async fn subscribe_before_connect_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_before_connect(&mut node, &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00])
        .await
}

/// A PUBLISH whose topic name contains a wildcard.
#[tokio::test]
async fn wildcard_in_publish_topic_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_after_connect(&mut node, &Publish::new("a/+/c", 0, b"x").encode()).await
}

/// A PUBLISH whose topic name is `#`.
#[tokio::test]
async fn hash_as_publish_topic_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_after_connect(&mut node, &Publish::new("#", 1, b"x").encode()).await
}

/// A PUBLISH whose topic name is not valid UTF-8.
#[tokio::test]
async fn invalid_utf8_topic_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    let publish = Publish::new("", 0, b"x").with_topic_bytes(&[0x61, 0x2F, 0xFF, 0xFE]);
    assert_rejected_after_connect(&mut node, &publish.encode()).await
}

/// With `--max-packet-size 1024`, a PUBLISH declaring 1 MiB is refused
/// from its header, before the node reads (or buffers) the body.
#[tokio::test]
async fn oversized_packet_is_rejected_before_it_is_read() -> Result<()> {
    let mut node = NodeProcess::start_with(&[("--max-packet-size", "1024")])?;
    let connect = Connect::new(&unique_id("big"));
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    // Fixed header declaring 1 048 576 bytes, then only the topic and a little payload.
    let mut start = vec![0x30, 0x80, 0x80, 0x40, 0x00, 0x03, b'b', b'/', b'g'];
    start.extend([0u8; 100]);
    client.send(&start).await?;
    client.expect_closed(TIMEOUT).await?;
    assert_serves_clients(&mut node).await
}

/// A CONNECT cut off after the protocol name.
#[tokio::test]
async fn truncated_connect_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_before_connect(&mut node, &[0x10, 0x06, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54])
        .await
}

/// A CONNECT with the protocol level but without flags, keep-alive or payload.
#[tokio::test]
async fn connect_missing_flags_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_before_connect(
        &mut node,
        &[0x10, 0x07, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04],
    )
    .await
}

/// A CONNECT with the reserved connect-flag bit 0 set.
#[tokio::test]
async fn connect_with_reserved_flag_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("reserved")).with_reserved_flag();
    assert_rejected_before_connect(&mut node, &connect.encode()).await
}

/// A PUBLISH whose topic length (5) runs past its remaining length (2).
#[tokio::test]
async fn publish_topic_longer_than_packet_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    let bytes = [
        0x30, 0x02, 0x00, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65, 0xC0, 0x00,
    ];
    assert_rejected_after_connect(&mut node, &bytes).await
}

/// A SUBSCRIBE whose only filter lacks its requested-QoS byte.
#[tokio::test]
async fn subscribe_without_qos_byte_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_after_connect(&mut node, &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 0x61]).await
}

/// A SUBSCRIBE with a packet id but no filter at all.
#[tokio::test]
async fn subscribe_without_filters_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_after_connect(&mut node, &[0x82, 0x02, 0x00, 0x01]).await
}

/// A SUBSCRIBE whose fixed-header flags are not the required 0b0010.
#[tokio::test]
async fn subscribe_with_wrong_header_flags_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_after_connect(&mut node, &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00])
        .await
}

/// A PUBLISH with both QoS bits set (QoS 3 does not exist).
#[tokio::test]
async fn publish_with_qos_3_closes_connection() -> Result<()> {
    let mut node = NodeProcess::start()?;
    assert_rejected_after_connect(
        &mut node,
        &[0x36, 0x07, 0x00, 0x01, 0x61, 0x00, 0x01, 0x78, 0x79],
    )
    .await
}
