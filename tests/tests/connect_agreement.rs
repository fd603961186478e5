//! The proxy and a node judge every CONNECT the same way.
//!
//! Both apply one rule set (`astramq_shared::mqtt_connect`); this checks it
//! end to end on real processes. Each CONNECT of the table (built here
//! byte by byte, independently of either parser) is sent once straight to a
//! node and once through a proxy in front of that node, and the client must
//! see the same thing both times: a CONNACK with the same return code (and
//! then, for a refusal, the close; for an acceptance, a served PINGREQ), or
//! a close with no answer at all.

use std::time::Duration;

use anyhow::{Context, Result};
use astramq_tests::proxy::ProxyProcess;
use astramq_tests::{unique_id, NodeProcess, RawClient};

/// Encodes a CONNECT from its parts: protocol name and level, flags,
/// optional 5.0 properties (placed before the payload), payload fields.
fn connect(name: &[u8], level: u8, flags: u8, props: Option<&[u8]>, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend((name.len() as u16).to_be_bytes());
    body.extend(name);
    body.push(level);
    body.push(flags);
    body.extend(30u16.to_be_bytes());
    if let Some(props) = props {
        body.push(props.len() as u8);
        body.extend(props);
    }
    for field in payload {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(*field);
    }
    astramq_tests::wire::frame(0x10, &body)
}

/// What the client saw after sending `bytes` to `addr` as its first packet.
async fn outcome(addr: std::net::SocketAddr, bytes: &[u8]) -> Result<String> {
    let mut client = RawClient::connect_tcp(addr).await?;
    client.send(bytes).await?;
    let first = match client.recv_for(Duration::from_secs(5)).await {
        Ok(Some(packet)) => packet,
        Ok(None) => return Ok("silence".into()),
        Err(_) => return Ok("closed without an answer".into()),
    };
    let said = format!("{:#04x} {:02x?}", first.first_byte, first.body);
    if first.first_byte == 0x20 && first.body.get(1) == Some(&0) {
        client.ping().await.context("PINGREQ after CONNACK 0")?;
        return Ok(format!("{said}, served"));
    }
    client.expect_closed(Duration::from_secs(5)).await?;
    Ok(format!("{said}, closed"))
}

#[tokio::test]
async fn proxy_and_node_answer_every_connect_alike() -> Result<()> {
    let node = NodeProcess::start()?;
    let backend = node.addr().to_string();
    let proxy = ProxyProcess::start(&[("--backends", backend.as_str())])?;

    let id = unique_id("agree");
    let id = id.as_bytes();
    let long_31 = [b'x'; 24];
    let table: Vec<(&str, Vec<u8>)> = vec![
        ("3.1.1", connect(b"MQTT", 4, 0x02, None, &[id])),
        ("3.1", connect(b"MQIsdp", 3, 0x02, None, &[b"v31-agree"])),
        (
            "3.1.1 empty id, clean",
            connect(b"MQTT", 4, 0x02, None, &[b""]),
        ),
        (
            "3.1.1 will, user, password",
            connect(b"MQTT", 4, 0xCE, None, &[id, b"w/t", b"bye", b"u", b"p"]),
        ),
        (
            "5.0",
            connect(b"MQTT", 5, 0x02, Some(&[0x21, 0x00, 0x10]), &[id]),
        ),
        ("level 6", connect(b"MQTT", 6, 0x02, None, &[id])),
        ("MQIsdp level 4", connect(b"MQIsdp", 4, 0x02, None, &[id])),
        ("level 2", connect(b"MQTT", 2, 0x02, None, &[id])),
        (
            "unknown protocol name",
            connect(b"HTTP", 4, 0x02, None, &[id]),
        ),
        ("reserved flag", connect(b"MQTT", 4, 0x03, None, &[id])),
        (
            "will QoS without will",
            connect(b"MQTT", 4, 0x0A, None, &[id]),
        ),
        (
            "will retain without will",
            connect(b"MQTT", 4, 0x22, None, &[id]),
        ),
        (
            "will QoS 3",
            connect(b"MQTT", 4, 0x1E, None, &[id, b"w", b"p"]),
        ),
        (
            "password without user name",
            connect(b"MQTT", 4, 0x42, None, &[id, b"pw"]),
        ),
        (
            "bytes after the last field",
            connect(b"MQTT", 4, 0x02, None, &[id, b"extra"]),
        ),
        (
            "empty id, persistent",
            connect(b"MQTT", 4, 0x00, None, &[b""]),
        ),
        ("3.1 empty id", connect(b"MQIsdp", 3, 0x02, None, &[b""])),
        (
            "3.1 id over 23 bytes",
            connect(b"MQIsdp", 3, 0x02, None, &[&long_31]),
        ),
        (
            "will topic with a wildcard",
            connect(b"MQTT", 4, 0x06, None, &[id, b"a/+", b"p"]),
        ),
        (
            "empty will topic",
            connect(b"MQTT", 4, 0x06, None, &[id, b"", b"p"]),
        ),
        (
            "U+0000 in the client id",
            connect(b"MQTT", 4, 0x02, None, &[b"a\0b"]),
        ),
        (
            "invalid UTF-8 user name",
            connect(b"MQTT", 4, 0x82, None, &[id, &[0xC3, 0x28]]),
        ),
        (
            "truncated after the protocol name",
            vec![0x10, 0x06, 0x00, 0x04, b'M', b'Q', b'T', b'T'],
        ),
        (
            "missing flags and keep-alive",
            vec![0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04],
        ),
        ("reserved fixed-header flags", vec![0x12, 0x00]),
    ];

    let mut differ = Vec::new();
    let mut report = String::new();
    for (what, bytes) in &table {
        let direct = outcome(node.addr(), bytes).await?;
        let proxied = outcome(proxy.addr, bytes).await?;
        report.push_str(&format!("{what}: node: {direct}; proxy: {proxied}\n"));
        if direct != proxied {
            differ.push(*what);
        }
    }
    anyhow::ensure!(
        differ.is_empty(),
        "proxy and node differ on {differ:?}:\n{report}"
    );
    // The table means something: each kind of answer occurs.
    for expected in [
        "0x20 [00, 00], served",
        "0x20 [00, 01], closed",
        "0x20 [00, 02], closed",
        "closed without an answer",
    ] {
        anyhow::ensure!(
            report.contains(expected),
            "no case gave {expected:?}:\n{report}"
        );
    }
    Ok(())
}
