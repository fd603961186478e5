//! MQTT over WebSocket (issue 14, item 4), with real processes: a node's
//! and a proxy's `--ws-listen` and `--wss-listen` (certificates made during
//! the test with `rcgen`) carry MQTT both ways for a raw WebSocket client
//! ([`WsClient`]: tungstenite's client, our own TLS) and for `paho-mqtt`
//! with `transport="websockets"` (Debian's python3-paho-mqtt, run by
//! `/usr/bin/python3`, installed through scripts/ensure-deps.sh when
//! missing). Packet boundaries do not matter (a packet split over messages,
//! several packets in one message); a wrong path gets 404, no `mqtt`
//! subprotocol 400, plain MQTT to the port and a text message are closed
//! (the text message with 1003), a message over the packet size limit with
//! 1009; authentication and the ACL hold over WebSocket as over TCP.

mod tls_pki;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use astramq_tests::observability::cluster::node_metrics_addr;
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::paho::{ensure_paho, run_script};
use astramq_tests::proxy::ProxyProcess;
use astramq_tests::users::{add_user, TempDir};
use astramq_tests::wire::{Connect, Publish};
use astramq_tests::ws::{Upgrade, Upgraded, WsClient};
use astramq_tests::{unique_id, within, NodeProcess, RawClient, TIMEOUT};
use tls_pki::Pki;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The address on the line `PROGRAM listening on SCHEME://ADDR` in `log`.
fn announced(log: &str, program: &str, scheme: &str) -> Option<SocketAddr> {
    let prefix = format!("{program} listening on {scheme}://");
    log.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|addr| addr.trim().parse().ok())
}

/// A node's `ws://` and `wss://` addresses and its certificates.
struct WsNode {
    node: NodeProcess,
    ws: SocketAddr,
    wss: SocketAddr,
    pki: Pki,
}

/// A node with `--ws-listen` and `--wss-listen`, metrics on, and `extra`.
fn ws_node(name: &str, extra: &[(&str, &str)]) -> Result<WsNode> {
    let pki = Pki::new(name)?;
    let server = pki.server()?;
    let cert = server.cert.display().to_string();
    let key = server.key.display().to_string();
    let mut flags = vec![
        ("--ws-listen", "127.0.0.1:0"),
        ("--wss-listen", "127.0.0.1:0"),
        ("--tls-cert", cert.as_str()),
        ("--tls-key", key.as_str()),
        ("--metrics-listen", "127.0.0.1:0"),
    ];
    flags.extend_from_slice(extra);
    let node = NodeProcess::start_with(&flags)?;
    let log = node.log();
    let addr = |scheme| {
        announced(&log, "astramq-node", scheme)
            .ok_or_else(|| anyhow!("no {scheme}:// line; output:\n{}", node.log_tail()))
    };
    let (ws, wss) = (addr("ws")?, addr("wss")?);
    Ok(WsNode { node, ws, wss, pki })
}

/// A proxy in front of `node` with `--ws-listen` and `--wss-listen` using
/// `pki`'s server certificate; its `ws://` and `wss://` addresses (their
/// lines may come after the plain one).
async fn ws_proxy(node: &NodeProcess, pki: &Pki) -> Result<(ProxyProcess, SocketAddr, SocketAddr)> {
    let server = pki.server()?;
    let cert = server.cert.display().to_string();
    let key = server.key.display().to_string();
    let backend = node.addr().to_string();
    let proxy = ProxyProcess::start(&[
        ("--backends", backend.as_str()),
        ("--ws-listen", "127.0.0.1:0"),
        ("--wss-listen", "127.0.0.1:0"),
        ("--tls-cert", cert.as_str()),
        ("--tls-key", key.as_str()),
    ])?;
    let (ws, wss) = within("the proxy's WebSocket listening lines", async {
        loop {
            let log = proxy.log_tail();
            let ws = announced(&log, "astramq-proxy", "ws");
            let wss = announced(&log, "astramq-proxy", "wss");
            if let (Some(ws), Some(wss)) = (ws, wss) {
                return (ws, wss);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    Ok((proxy, ws, wss))
}

/// A subscriber over `sub` receives what a publisher over `publ` sends.
async fn ws_round_trip(sub: Upgrade<'_>, publ: Upgrade<'_>, topic: &str) -> Result<()> {
    let mut subscriber = WsClient::connected(sub, &Connect::new(&unique_id("wsub"))).await?;
    ensure!(subscriber.subscribe(1, &[(topic, 1)]).await? == vec![1]);
    let mut publisher = WsClient::connected(publ, &Connect::new(&unique_id("wpub"))).await?;
    publisher
        .send(&Publish::new(topic, 0, topic.as_bytes()).encode())
        .await?;
    let got = subscriber.recv_publish().await?;
    ensure!(got.topic == topic.as_bytes() && got.payload == topic.as_bytes());
    Ok(())
}

#[tokio::test]
async fn ws_and_wss_clients_exchange_messages_through_a_node() -> Result<()> {
    let n = ws_node("ws-node", &[])?;
    let ca = n.pki.ca_pem();
    ws_round_trip(Upgrade::ws(n.ws), Upgrade::wss(n.wss, &ca), "ws/node/a").await?;
    ws_round_trip(Upgrade::wss(n.wss, &ca), Upgrade::ws(n.ws), "ws/node/b").await?;
    // And with a plain TCP client on the other side.
    let mut subscriber =
        WsClient::connected(Upgrade::ws(n.ws), &Connect::new(&unique_id("wsub"))).await?;
    subscriber.subscribe(1, &[("ws/tcp", 0)]).await?;
    let (mut tcp, _) =
        RawClient::connected(n.node.addr(), &Connect::new(&unique_id("tcp"))).await?;
    tcp.send(&Publish::new("ws/tcp", 0, b"from tcp").encode())
        .await?;
    ensure!(subscriber.recv_publish().await?.payload == b"from tcp");
    Ok(())
}

#[tokio::test]
async fn ws_and_wss_clients_exchange_messages_through_the_proxy() -> Result<()> {
    let n = ws_node("ws-proxy", &[])?;
    let (_proxy, ws, wss) = ws_proxy(&n.node, &n.pki).await?;
    let ca = n.pki.ca_pem();
    ws_round_trip(Upgrade::ws(ws), Upgrade::wss(wss, &ca), "ws/proxy/a").await?;
    ws_round_trip(Upgrade::wss(wss, &ca), Upgrade::ws(n.ws), "ws/proxy/b").await?;
    // The proxy's refusals are the node's.
    for (path, protocol, status) in [("/", Some("mqtt"), 404), ("/mqtt", None, 400)] {
        let upgrade = Upgrade {
            path,
            protocol,
            ..Upgrade::ws(ws)
        };
        match WsClient::try_open(upgrade).await? {
            Upgraded::Refused(got) => ensure!(got == status, "{path}: HTTP {got}"),
            Upgraded::Open(_) => anyhow::bail!("{path} {protocol:?} was upgraded"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn packets_split_over_messages_and_several_in_one_message_work() -> Result<()> {
    let n = ws_node("ws-frames", &[])?;
    let mut client = WsClient::open(Upgrade::ws(n.ws)).await?;
    // CONNECT in three messages: fixed header alone, then the body in two.
    let connect = Connect::new(&unique_id("split")).encode();
    client.send(&connect[..1]).await?;
    client.send(&connect[1..5]).await?;
    client.send(&connect[5..]).await?;
    ensure!(client.recv().await?.connack()?.code == 0);
    // SUBSCRIBE, a PUBLISH to it and a PINGREQ in one message.
    let mut batch = astramq_tests::wire::subscribe(7, &[("ws/batch", 0)]);
    batch.extend(Publish::new("ws/batch", 0, b"batched").encode());
    batch.extend(astramq_tests::wire::pingreq());
    client.send(&batch).await?;
    ensure!(client.recv().await?.suback()? == (7, vec![0]));
    // The PUBLISH comes back through the router, the PINGRESP at once:
    // either may be first.
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let packet = client.recv().await?;
        if packet.kind() == astramq_tests::wire::kind::PUBLISH {
            ensure!(packet.publish()?.payload == b"batched");
        }
        kinds.push(packet.kind());
    }
    kinds.sort_unstable();
    ensure!(
        kinds
            == [
                astramq_tests::wire::kind::PUBLISH,
                astramq_tests::wire::kind::PINGRESP
            ],
        "got packet kinds {kinds:?}"
    );
    // A PUBLISH split mid-payload, byte by byte across its header.
    let publish = Publish::new("ws/batch", 0, &[b'x'; 300]).encode();
    for chunk in [
        &publish[..1],
        &publish[1..2],
        &publish[2..150],
        &publish[150..],
    ] {
        client.send(chunk).await?;
    }
    ensure!(client.recv_publish().await?.payload == vec![b'x'; 300]);
    Ok(())
}

/// The node's `astramq_connections_refused_total{reason}`.
fn refusals(node: &NodeProcess, reason: &str) -> Result<f64> {
    let metrics = Exposition::scrape(node_metrics_addr(node)?)?;
    Ok(metrics.total("astramq_connections_refused_total", &[("reason", reason)]))
}

#[tokio::test]
async fn wrong_paths_subprotocols_and_plain_mqtt_are_refused_cleanly() -> Result<()> {
    let n = ws_node("ws-refuse", &[])?;
    let ca = n.pki.ca_pem();
    let cases = [
        (
            Upgrade {
                path: "/",
                ..Upgrade::ws(n.ws)
            },
            404,
        ),
        (
            Upgrade {
                path: "/mqtt/x",
                ..Upgrade::wss(n.wss, &ca)
            },
            404,
        ),
        (
            Upgrade {
                protocol: None,
                ..Upgrade::ws(n.ws)
            },
            400,
        ),
        (
            Upgrade {
                protocol: Some("wamp"),
                ..Upgrade::ws(n.ws)
            },
            400,
        ),
    ];
    for (upgrade, status) in cases {
        let path = upgrade.path;
        match WsClient::try_open(upgrade).await? {
            Upgraded::Refused(got) => ensure!(got == status, "{path}: HTTP {got}, not {status}"),
            Upgraded::Open(_) => anyhow::bail!("{path} was upgraded"),
        }
    }
    // Plain MQTT to the WebSocket port: closed, the port keeps serving.
    let mut raw = RawClient::connect_tcp(n.ws).await?;
    raw.send(&Connect::new(&unique_id("raw")).encode()).await?;
    raw.expect_closed(TIMEOUT).await?;
    // The node counts a refusal just after closing the socket: wait for it.
    let counted = Instant::now() + TIMEOUT;
    while refusals(&n.node, "ws_handshake")? < 5.0 {
        ensure!(Instant::now() < counted, "refusals not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    WsClient::connected(Upgrade::ws(n.ws), &Connect::new(&unique_id("after")))
        .await?
        .ping()
        .await?;
    Ok(())
}

#[tokio::test]
async fn text_and_oversized_messages_close_the_connection() -> Result<()> {
    let n = ws_node("ws-close", &[("--max-packet-size", "1024")])?;
    let mut client =
        WsClient::connected(Upgrade::ws(n.ws), &Connect::new(&unique_id("text"))).await?;
    client.send_message(Message::text("hello")).await?;
    ensure!(client.expect_closed(TIMEOUT).await? == Some(CloseCode::Unsupported));

    let mut client =
        WsClient::connected(Upgrade::ws(n.ws), &Connect::new(&unique_id("big"))).await?;
    client.send(&vec![0u8; 4096]).await?;
    ensure!(client.expect_closed(TIMEOUT).await? == Some(CloseCode::Size));

    // A packet over --max-packet-size in messages within the limit is
    // refused by the MQTT framing, as on TCP.
    let mut client =
        WsClient::connected(Upgrade::ws(n.ws), &Connect::new(&unique_id("pkt"))).await?;
    let publish = Publish::new("ws/big", 0, &[0u8; 2000]).encode();
    for chunk in publish.chunks(500) {
        let _ = client.send(chunk).await;
    }
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

#[tokio::test]
async fn authentication_applies_over_websocket() -> Result<()> {
    let dir = TempDir::new("astramq-ws-auth")?;
    let file = dir.join("passwords").display().to_string();
    add_user(&["--password-file", &file], "alice", "ws-secret")?;
    let n = ws_node(
        "ws-auth",
        &[("--allow-anonymous", "false"), ("--password-file", &file)],
    )?;
    let ca = n.pki.ca_pem();
    for upgrade in [Upgrade::ws(n.ws), Upgrade::wss(n.wss, &ca)] {
        let code = |c: Connect| {
            let upgrade = upgrade.clone();
            async move { Ok::<_, anyhow::Error>(WsClient::handshake(upgrade, &c).await?.1.code) }
        };
        let id = unique_id("alice");
        ensure!(code(Connect::new(&id).with_credentials("alice", "wrong")).await? == 0x04);
        ensure!(code(Connect::new(&id)).await? == 0x05);
        ensure!(code(Connect::new(&id).with_credentials("alice", "ws-secret")).await? == 0);
    }
    Ok(())
}

#[tokio::test]
async fn the_acl_applies_over_websocket() -> Result<()> {
    let dir = TempDir::new("astramq-ws-acl")?;
    let acl = dir.join("acl.toml");
    std::fs::write(
        &acl,
        "default = \"allow\"\n[[rule]]\naction = \"subscribe\"\ntopic = \"test/nosubscribe\"\npermission = \"deny\"\n",
    )?;
    let acl = acl.display().to_string();
    let n = ws_node("ws-acl", &[("--acl-file", &acl)])?;
    let mut client =
        WsClient::connected(Upgrade::ws(n.ws), &Connect::new(&unique_id("acl"))).await?;
    let codes = client
        .subscribe(1, &[("test/nosubscribe", 1), ("test/ok", 1)])
        .await?;
    ensure!(codes == vec![0x80, 1], "SUBACK {codes:?}");
    Ok(())
}

/// paho-mqtt (Debian's, for /usr/bin/python3) subscribing and publishing
/// over WebSocket; with `ca`, over TLS trusting it.
const PAHO_ROUND_TRIP: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
host, port, ca, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
payload = "paho over websockets"

def client(suffix):
    try:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=topic.replace("/", "-") + suffix, transport="websockets")
    except AttributeError:
        c = mqtt.Client(client_id=topic.replace("/", "-") + suffix, transport="websockets")
    c.ws_set_options(path="/mqtt")
    if ca != "-":
        c.tls_set(ca_certs=ca)
    return c

got, subscribed = threading.Event(), threading.Event()
sub = client("-sub")
sub.on_connect = lambda c, u, f, rc: c.subscribe(topic, 1)
sub.on_subscribe = lambda c, u, mid, granted: subscribed.set()
sub.on_message = lambda c, u, m: m.payload.decode() == payload and got.set()
sub.connect(host, port, 30)
sub.loop_start()
if not subscribed.wait(10):
    sys.exit("no SUBACK")
pub = client("-pub")
pub.connect(host, port, 30)
pub.loop_start()
pub.publish(topic, payload, qos=1)
if not got.wait(10):
    sys.exit("message not received")
print("received")
"#;

/// Runs [`PAHO_ROUND_TRIP`] against `localhost:port`.
async fn paho_round_trip(port: u16, ca: Option<&Path>, topic: &str) -> Result<()> {
    let ca = ca.map_or("-".to_owned(), |ca| ca.display().to_string());
    let args = ["localhost", &port.to_string(), &ca, topic];
    run_script(PAHO_ROUND_TRIP, &args, TIMEOUT, "received")
        .await
        .with_context(|| format!("paho {topic}"))
}

#[tokio::test]
async fn paho_mqtt_over_websockets_through_a_node_and_the_proxy() -> Result<()> {
    ensure_paho()?;
    let n = ws_node("ws-paho", &[])?;
    let ca = n.pki.ca_file();
    paho_round_trip(n.ws.port(), None, "paho/node/ws").await?;
    paho_round_trip(n.wss.port(), Some(&ca), "paho/node/wss").await?;
    let (_proxy, ws, wss) = ws_proxy(&n.node, &n.pki).await?;
    paho_round_trip(ws.port(), None, "paho/proxy/ws").await?;
    paho_round_trip(wss.port(), Some(&ca), "paho/proxy/wss").await?;
    Ok(())
}

#[tokio::test]
async fn wss_listen_without_tls_files_refuses_start_up() -> Result<()> {
    let (code, stderr) = NodeProcess::exit_of(&["--wss-listen".as_ref(), "127.0.0.1:0".as_ref()])?;
    ensure!(
        code == Some(2) && stderr.contains("tls-cert") && stderr.contains("--wss-listen"),
        "exit code {code:?}: {stderr}"
    );
    Ok(())
}
