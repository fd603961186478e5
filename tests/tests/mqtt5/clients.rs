//! Independent clients (mosquitto -V 5, paho-mqtt MQTTv5, rumqttc v5), request/response (§4.10), WebSocket, and 5.0 through astramq-proxy.

use super::*;
use astramq_tests::paho::{ensure_paho, run_script};

/// Whether `name` is an executable on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// §3.3.2.3 with the mosquitto clients (`-V 5`): properties set by
/// `mosquitto_pub -D publish ...` are printed unchanged by `mosquitto_sub
/// -F` (content type %C, response topic %R, correlation data %D, message
/// expiry %E (at most what was sent, §3.3.2.3.3), payload format %F, user
/// properties %P in order).
#[tokio::test]
async fn mosquitto_v5_clients_carry_publish_properties() -> Result<()> {
    ensure!(
        ["mosquitto_pub", "mosquitto_sub", "stdbuf"]
            .iter()
            .all(|tool| on_path(tool)),
        "mosquitto clients or stdbuf missing: run scripts/test, which installs them"
    );
    let node = NodeProcess::start()?;
    let port = node.port().to_string();
    let mut sub = tokio::process::Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-V",
            "5",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ])
        .args([
            "-i",
            &unique_id("mosq-sub"),
            "-t",
            "mosq/#",
            "-q",
            "1",
            "-C",
            "1",
        ])
        .args(["-d", "-W", "20", "-F", "MSG|%t|%C|%R|%D|%E|%F|%P|%p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning mosquitto_sub")?;
    let mut lines = BufReader::new(sub.stdout.take().context("stdout")?).lines();
    within("mosquitto_sub's SUBACK", async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("SUBACK") {
                return Ok(());
            }
        }
        bail!("mosquitto_sub exited before its SUBACK")
    })
    .await??;
    let publish = tokio::process::Command::new("mosquitto_pub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port, "-q", "1"])
        .args(["-t", "mosq/x", "-m", "hello-props"])
        .args(["-D", "publish", "content-type", "text/plain"])
        .args(["-D", "publish", "response-topic", "mosq/reply"])
        .args(["-D", "publish", "correlation-data", "corr-17"])
        .args(["-D", "publish", "message-expiry-interval", "120"])
        .args(["-D", "publish", "payload-format-indicator", "1"])
        .args(["-D", "publish", "user-property", "k1", "v1"])
        .args(["-D", "publish", "user-property", "k2", "v2"])
        .args(["-D", "publish", "user-property", "k1", "v3"])
        .kill_on_drop(true)
        .output();
    let out = within("mosquitto_pub", publish).await??;
    ensure!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = within("mosquitto_sub's message line", async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("MSG|") {
                return Ok(rest.to_owned());
            }
        }
        bail!("mosquitto_sub exited without printing the message")
    })
    .await??;
    let fields: Vec<&str> = line.split('|').collect();
    ensure!(fields.len() == 8, "mosquitto_sub printed {line:?}");
    ensure!(
        fields[0] == "mosq/x"
            && fields[1] == "text/plain"
            && fields[2] == "mosq/reply"
            && fields[3] == "corr-17"
            && fields[5] == "1"
            && fields[7] == "hello-props",
        "mosquitto_sub printed {line:?}"
    );
    let expiry: u32 = fields[4]
        .trim()
        .parse()
        .with_context(|| format!("no message expiry in {line:?}"))?;
    ensure!((100..=120).contains(&expiry), "message expiry {expiry}");
    let users = fields[6];
    let at = |needle: &str| {
        users
            .find(needle)
            .with_context(|| format!("{needle} missing from %P {users:?}"))
    };
    ensure!(
        at("k1:v1")? < at("k2:v2")? && at("k2:v2")? < at("k1:v3")?,
        "user properties out of order: {users:?}"
    );
    Ok(())
}

/// paho-mqtt with MQTTv5: subscribes to the response topic, publishes a
/// request with Response Topic and Correlation Data, prints the hex of the
/// Correlation Data and the payload of the response it gets.
const PAHO_REQUESTER: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, request, response, client_id = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
subscribed, answered = threading.Event(), threading.Event()
got = {}
def on_connect(c, userdata, flags, rc, props=None):
    c.subscribe(response, qos=1)
def on_subscribe(c, userdata, mid, codes, props=None):
    subscribed.set()
def on_message(c, userdata, msg):
    got["corr"] = getattr(msg.properties, "CorrelationData", b"")
    got["payload"] = msg.payload
    answered.set()
c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=30)
c.loop_start()
if not subscribed.wait(5):
    print("no SUBACK"); sys.exit(2)
props = Properties(PacketTypes.PUBLISH)
props.ResponseTopic = response
props.CorrelationData = b"\x00req-42\xff"
c.publish(request, b"what time is it", qos=1, properties=props)
if not answered.wait(5):
    print("no response"); sys.exit(3)
print(got["corr"].hex(), got["payload"].decode())
c.disconnect()
c.loop_stop()
"#;

/// §4.10 [MQTT-3.3.2-15], [MQTT-3.3.2-16]: a `rumqttc::v5` responder
/// subscribed to the request topic answers on the request's Response
/// Topic with its Correlation Data; the paho-mqtt (MQTTv5) requester gets
/// the answer with the Correlation Data it sent.
#[tokio::test]
async fn request_response_between_rumqttc_and_paho() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    ensure_paho()?;
    let node = NodeProcess::start()?;
    let request = unique_id("svc/time");
    let response = unique_id("reply/time");

    let mut options = MqttOptions::new(unique_id("responder"), "127.0.0.1", node.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (responder, mut eventloop) = AsyncClient::new(options, 16);
    responder
        .subscribe(request.as_str(), RQoS::AtLeastOnce)
        .await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let serve = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(RPacket::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(RPacket::Publish(req))) => {
                    let props = req.properties.clone().unwrap_or_default();
                    let Some(topic) = props.response_topic else {
                        continue;
                    };
                    let answer = PublishProperties {
                        correlation_data: props.correlation_data,
                        ..Default::default()
                    };
                    let body = format!("answer to {}", String::from_utf8_lossy(&req.payload));
                    let _ = responder.try_publish_with_properties(
                        topic,
                        RQoS::AtLeastOnce,
                        false,
                        body,
                        answer,
                    );
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    within("the responder's SUBACK", ready_rx).await??;

    let port = node.port().to_string();
    let requester = unique_id("requester");
    let args = ["127.0.0.1", &port, &request, &response, &requester];
    let expected = "007265712d3432ff answer to what time is it";
    let asked = run_script(PAHO_REQUESTER, &args, Duration::from_secs(15), expected).await;
    serve.abort();
    asked.context("the paho requester")
}

/// A 5.0 client through the proxy is routed to the node and served with
/// 5.0 semantics: a CONNACK with properties, SUBACK and PUBACK reason
/// codes, and User Properties carried.
#[tokio::test]
async fn a_v5_client_through_the_proxy_is_served() -> Result<()> {
    let node = NodeProcess::start()?;
    let proxy = ProxyProcess::start(&[("--backends", &node.addr().to_string())])?;
    let mut sub = Client5::connect(proxy.addr, &Connect5::new(&unique_id("psub"))).await?;
    ensure!(
        sub.connack.props.get_two(id::RECEIVE_MAXIMUM).is_some(),
        "the CONNACK through the proxy lost its properties: {:?}",
        sub.connack
    );
    ensure!(sub.subscribe(1, &[("px5/t", 1)]).await?.reasons == [1]);
    let mut publisher = Client5::connect(proxy.addr, &Connect5::new(&unique_id("ppub"))).await?;
    let sent = Publish5::new("px5/t", 1, b"via proxy")
        .id(3)
        .props(Properties::new().user("hop", "proxy"));
    ack_reason(publisher.publish(&sent).await?, reason::SUCCESS)?;
    let got = sub.recv_publish_acked().await?;
    ensure!(
        got.payload == b"via proxy" && got.props.users() == [("hop".into(), "proxy".into())],
        "got {got:?}"
    );
    Ok(())
}

/// §3.2.2.2: with no live node, the proxy answers a 5.0 CONNECT with the
/// 5.0 CONNACK 0x88 (Server unavailable): exactly `20 03 00 88 00`, then
/// the close. (A 3.1.1 client gets the 3.1.1 code 0x03, tests/proxy.rs.)
#[tokio::test]
async fn without_a_node_the_proxy_answers_v5_with_connack_0x88() -> Result<()> {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let proxy = ProxyProcess::start(&[("--backends", &dead.to_string())])?;
    let mut client = RawClient::connect_tcp(proxy.addr).await?;
    client
        .send(&Connect5::new(&unique_id("nowhere")).encode())
        .await?;
    let answer = client.recv().await?;
    let mut bytes = vec![answer.first_byte];
    bytes.extend(astramq_tests::wire::remaining_length(answer.body.len()));
    bytes.extend(&answer.body);
    ensure!(
        bytes == [0x20, 0x03, 0x00, reason::SERVER_UNAVAILABLE, 0x00],
        "proxy answered {bytes:02x?}"
    );
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

/// paho-mqtt with MQTTv5 over WebSocket (`/mqtt`): a subscriber and a
/// publisher; prints the User Properties and Content Type the subscriber
/// got.
const PAHO_WS_V5: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got, subscribed = threading.Event(), threading.Event()
seen = {}
def client(suffix):
    c = mqtt.Client(client_id=topic.replace("/", "-") + suffix, protocol=mqtt.MQTTv5, transport="websockets")
    c.ws_set_options(path="/mqtt")
    return c
def on_message(c, u, m):
    seen["users"] = getattr(m.properties, "UserProperty", [])
    seen["type"] = getattr(m.properties, "ContentType", "")
    got.set()
sub = client("-sub")
sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
sub.on_subscribe = lambda c, u, mid, codes, p=None: subscribed.set()
sub.on_message = on_message
sub.connect(host, port, 30)
sub.loop_start()
if not subscribed.wait(10):
    sys.exit("no SUBACK")
pub = client("-pub")
pub.connect(host, port, 30)
pub.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = ("a", "1")
props.UserProperty = ("b", "2")
props.ContentType = "text/x-ws"
pub.publish(topic, "over ws", qos=1, properties=props)
if not got.wait(10):
    sys.exit("message not received")
print(seen["type"], ",".join(k + "=" + v for k, v in seen["users"]))
"#;

/// 5.0 on the WebSocket listener (`--ws-listen`): paho-mqtt with MQTTv5
/// over WebSocket subscribes and publishes, and the subscriber gets the
/// Content Type and User Properties (in order) the publisher set.
#[tokio::test]
async fn paho_v5_over_websocket_carries_properties() -> Result<()> {
    ensure_paho()?;
    let node = NodeProcess::start_with(&[("--ws-listen", "127.0.0.1:0")])?;
    let log = node.log();
    let ws = log
        .lines()
        .find_map(|line| line.strip_prefix("astramq-node listening on ws://"))
        .and_then(|addr| addr.trim().parse::<std::net::SocketAddr>().ok())
        .with_context(|| format!("no ws:// line; output:\n{}", node.log_tail()))?;
    let port = ws.port().to_string();
    let topic = unique_id("ws5/t");
    let args = ["127.0.0.1", &port, &topic];
    run_script(
        PAHO_WS_V5,
        &args,
        Duration::from_secs(20),
        "text/x-ws a=1,b=2",
    )
    .await
    .context("paho over WebSocket")
}
