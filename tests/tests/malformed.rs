//! Malformed input: each case must close the offending connection, and the
//! node must stay up and keep serving other clients afterwards.
//!
//! The cases are one table run against one node, in order; a failure names
//! the case. Byte strings are written out literally so each case can be
//! read against the specification without trusting any encoder.

use anyhow::{Context, Result};
use astramq_tests::wire::{Connect, Publish};
use astramq_tests::{assert_serves_clients, unique_id, NodeProcess, RawClient, TIMEOUT};

/// When the bad bytes are sent.
#[derive(Debug, Clone, Copy)]
enum When {
    /// As the very first thing on a fresh connection.
    BeforeConnect,
    /// After a successful CONNECT.
    AfterConnect,
}

/// One malformed input.
struct Case {
    name: &'static str,
    when: When,
    bytes: Vec<u8>,
}

fn case(name: &'static str, when: When, bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        when,
        bytes: bytes.into(),
    }
}

/// Every case for a node with default limits.
fn cases() -> Vec<Case> {
    use When::{AfterConnect, BeforeConnect};
    vec![
        case(
            "a remaining length with five continuation bytes (the maximum is four)",
            BeforeConnect,
            [0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
        case(
            "a SUBSCRIBE before any CONNECT",
            BeforeConnect,
            [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00],
        ),
        case(
            "a CONNECT cut off after the protocol name",
            BeforeConnect,
            [0x10, 0x06, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54],
        ),
        case(
            "a CONNECT with the protocol level but no flags, keep-alive or payload",
            BeforeConnect,
            [0x10, 0x07, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04],
        ),
        case(
            "a CONNECT with the reserved connect-flag bit 0 set",
            BeforeConnect,
            Connect::new(&unique_id("reserved"))
                .with_reserved_flag()
                .encode(),
        ),
        case(
            "a PUBLISH whose topic name contains a wildcard",
            AfterConnect,
            Publish::new("a/+/c", 0, b"x").encode(),
        ),
        case(
            "a PUBLISH whose topic name is #",
            AfterConnect,
            Publish::new("#", 1, b"x").encode(),
        ),
        case(
            "a PUBLISH whose topic name is not valid UTF-8",
            AfterConnect,
            Publish::new("", 0, b"x")
                .with_topic_bytes(&[0x61, 0x2F, 0xFF, 0xFE])
                .encode(),
        ),
        case(
            "a PUBLISH whose topic length (5) runs past its remaining length (2)",
            AfterConnect,
            [
                0x30, 0x02, 0x00, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65, 0xC0, 0x00,
            ],
        ),
        case(
            "a PUBLISH with both QoS bits set (QoS 3 does not exist)",
            AfterConnect,
            [0x36, 0x07, 0x00, 0x01, 0x61, 0x00, 0x01, 0x78, 0x79],
        ),
        case(
            "a SUBSCRIBE whose only filter lacks its requested-QoS byte",
            AfterConnect,
            [0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 0x61],
        ),
        case(
            "a SUBSCRIBE with a packet id but no filter at all",
            AfterConnect,
            [0x82, 0x02, 0x00, 0x01],
        ),
        case(
            "a SUBSCRIBE whose fixed-header flags are not the required 0b0010",
            AfterConnect,
            [0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00],
        ),
    ]
}

/// Sends `case`'s bytes at its moment and expects the connection closed.
async fn assert_rejected(node: &NodeProcess, case: &Case) -> Result<()> {
    let mut client = match case.when {
        When::BeforeConnect => RawClient::connect_tcp(node.addr()).await?,
        When::AfterConnect => {
            let connect = Connect::new(&unique_id("bad"));
            RawClient::connected(node.addr(), &connect).await?.0
        }
    };
    client.send(&case.bytes).await?;
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

/// Every case closes its connection; after each the node serves clients.
#[tokio::test]
async fn each_malformed_packet_closes_its_connection_and_the_node_keeps_serving() -> Result<()> {
    let mut node = NodeProcess::start()?;
    for case in cases() {
        assert_rejected(&node, &case)
            .await
            .with_context(|| format!("{} ({:?})", case.name, case.when))?;
        assert_serves_clients(&mut node)
            .await
            .with_context(|| format!("after {}", case.name))?;
    }
    Ok(())
}

/// With `--max-packet-size 1024`, a PUBLISH declaring 1 MiB is refused
/// from its header, before the node reads (or buffers) the body.
#[tokio::test]
async fn oversized_packet_is_rejected_before_it_is_read() -> Result<()> {
    let mut node = NodeProcess::start_with(&[("--max-packet-size", "1024")])?;
    // Fixed header declaring 1 048 576 bytes, then only the topic and a little payload.
    let mut start = vec![0x30, 0x80, 0x80, 0x40, 0x00, 0x03, b'b', b'/', b'g'];
    start.extend([0u8; 100]);
    let oversized = case("a PUBLISH declaring 1 MiB", When::AfterConnect, start);
    assert_rejected(&node, &oversized).await?;
    assert_serves_clients(&mut node).await
}
