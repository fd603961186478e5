//! TLS on the node's own listener (issue 14, item 3), with real processes
//! and certificates made during the test (`rcgen`): `rumqttc` with rustls
//! and `mosquitto_sub --cafile` connect to `--tls-listen` and exchange
//! messages with plain-TCP clients; plain MQTT sent to the TLS port is
//! closed and counted while the plain port keeps serving; missing or bad
//! TLS files refuse start-up with exit code 2; with `--tls-client-ca` a
//! client without a certificate is refused and one with a CA-signed
//! certificate is let in under its CN, without a password; SIGHUP reloads
//! the certificates and keeps the old ones when the new files are bad.
//! The proxy's `--tls-listen` is tested the same way (round trip with
//! `rumqttc` and `mosquitto_sub`, plain MQTT refused, exit code 2).

mod tls_pki;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use astramq_tests::binary::proxy_binary;
use astramq_tests::observability::cluster::node_metrics_addr;
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::proxy::ProxyProcess;
use astramq_tests::wire::Connect;
use astramq_tests::{unique_id, within, NodeProcess, RawClient, TestClient, TIMEOUT};
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};
use tls_pki::{Identity, Pki};

/// The node's line announcing its TLS listener.
const TLS_READY_PREFIX: &str = "astramq-node listening on mqtts://";

/// A node with a TLS listener using `server`'s certificate, and `extra` flags.
fn tls_node(server: &Identity, extra: &[(&str, &str)]) -> Result<(NodeProcess, SocketAddr)> {
    let cert = server.cert.display().to_string();
    let key = server.key.display().to_string();
    let mut flags = vec![
        ("--tls-listen", "127.0.0.1:0"),
        ("--tls-cert", cert.as_str()),
        ("--tls-key", key.as_str()),
        ("--metrics-listen", "127.0.0.1:0"),
    ];
    flags.extend_from_slice(extra);
    let node = NodeProcess::start_with(&flags)?;
    let tls_addr = node
        .log()
        .lines()
        .find_map(|line| line.strip_prefix(TLS_READY_PREFIX))
        .and_then(|addr| addr.trim().parse().ok())
        .ok_or_else(|| anyhow!("no TLS listening line; output:\n{}", node.log_tail()))?;
    Ok((node, tls_addr))
}

/// `rumqttc` options for a TLS connection to `addr` trusting `ca`,
/// presenting `client` when given.
fn tls_options(
    addr: SocketAddr,
    id: &str,
    ca: &Pki,
    client: Option<&Identity>,
) -> Result<MqttOptions> {
    let client_auth = match client {
        Some(identity) => Some((
            std::fs::read(&identity.cert)?,
            std::fs::read(&identity.key)?,
        )),
        None => None,
    };
    let mut options = TestClient::options(addr, id);
    options.set_transport(Transport::Tls(TlsConfiguration::Simple {
        ca: ca.ca_pem().into_bytes(),
        alpn: None,
        client_auth,
    }));
    Ok(options)
}

/// The number of connections refused because of a failed TLS handshake.
fn tls_refusals(node: &NodeProcess) -> Result<f64> {
    let metrics = Exposition::scrape(node_metrics_addr(node)?)?;
    Ok(metrics.total(
        "astramq_connections_refused_total",
        &[("reason", "tls_handshake")],
    ))
}

/// A subscriber on one port receives what a publisher on the other sent.
async fn round_trip(
    subscriber: &mut TestClient,
    publisher: &mut TestClient,
    topic: &str,
) -> Result<()> {
    subscriber.subscribe(topic, QoS::AtLeastOnce).await?;
    publisher
        .publish(topic, QoS::AtLeastOnce, false, topic.as_bytes().to_vec())
        .await?;
    let message = subscriber.next_publish().await?;
    ensure!(message.topic == topic && message.payload.as_ref() == topic.as_bytes());
    Ok(())
}

#[tokio::test]
async fn rumqttc_over_tls_round_trips_and_plain_mqtt_to_the_tls_port_fails() -> Result<()> {
    let ca = Pki::new("rt")?;
    let (node, tls_addr) = tls_node(&ca.server()?, &[])?;
    let mut secure =
        TestClient::connect_with(tls_options(tls_addr, &unique_id("tls"), &ca, None)?).await?;
    let mut plain = TestClient::connect(node.addr(), &unique_id("plain")).await?;
    round_trip(&mut secure, &mut plain, "tls/in").await?;
    round_trip(&mut plain, &mut secure, "tls/out").await?;

    // Plain MQTT to the TLS port: the handshake fails, the node closes the
    // connection and counts it; the TLS and plain clients are unaffected.
    let before = tls_refusals(&node)?;
    let mut raw = RawClient::connect_tcp(tls_addr).await?;
    raw.send(&Connect::new(&unique_id("raw")).encode()).await?;
    raw.expect_closed(TIMEOUT).await?;
    ensure!(
        tls_refusals(&node)? >= before + 1.0,
        "the failed handshake was not counted"
    );
    round_trip(&mut secure, &mut plain, "tls/after").await?;
    let (mut fresh, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("fresh"))).await?;
    fresh.ping().await?;
    Ok(())
}

#[tokio::test]
async fn a_silent_tls_socket_is_closed_at_the_connect_timeout() -> Result<()> {
    let ca = Pki::new("idle")?;
    let (node, tls_addr) = tls_node(&ca.server()?, &[("--connect-timeout", "1")])?;
    let mut idle = RawClient::connect_tcp(tls_addr).await?;
    idle.expect_closed(Duration::from_secs(4)).await?;
    ensure!(tls_refusals(&node)? >= 1.0);
    Ok(())
}

/// `mosquitto_sub --cafile` on the TLS port `port` receives one message
/// that `publisher` (on a plain port) publishes until it arrives.
/// `mosquitto_sub` speaking MQTT `version` (`mqttv311` or `mqttv5`) over
/// TLS on `port` receives what `publisher` publishes.
async fn mosquitto_sub_receives(
    port: u16,
    ca: &Pki,
    publisher: &mut TestClient,
    version: &str,
) -> Result<()> {
    let topic = unique_id("tls/mosquitto");
    let subscriber = tokio::process::Command::new("mosquitto_sub")
        .args(["-V", version])
        .args(["-h", "localhost", "-p", &port.to_string(), "--cafile"])
        .arg(ca.ca_file())
        .args([
            "-t",
            &topic,
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
            "-i",
            &unique_id("mosq"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running mosquitto_sub")?;
    // Publish until the subscriber has subscribed and received one.
    let output = subscriber.wait_with_output();
    tokio::pin!(output);
    let output = within("mosquitto_sub", async {
        loop {
            tokio::select! {
                output = &mut output => return output,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    let _ = publisher.publish(&topic, QoS::AtMostOnce, false, b"over tls".to_vec()).await;
                }
            }
        }
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout.trim() == "over tls",
        "mosquitto_sub {}: {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn mosquitto_sub_with_cafile_receives_over_tls() -> Result<()> {
    let ca = Pki::new("mosq")?;
    let (node, tls_addr) = tls_node(&ca.server()?, &[])?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    mosquitto_sub_receives(tls_addr.port(), &ca, &mut publisher, "mqttv311").await?;
    // MQTT 5.0 over the same TLS listener.
    mosquitto_sub_receives(tls_addr.port(), &ca, &mut publisher, "mqttv5").await
}

/// Runs a node with `flags` that must refuse to start; its exit code and stderr.
fn run_node_to_exit(flags: &[&str]) -> Result<(Option<i32>, String)> {
    let args: Vec<&std::ffi::OsStr> = ["--tls-listen", "127.0.0.1:0"]
        .iter()
        .chain(flags)
        .map(std::ffi::OsStr::new)
        .collect();
    NodeProcess::exit_of(&args)
}

#[tokio::test]
async fn missing_or_invalid_tls_files_refuse_start_up_with_exit_code_2() -> Result<()> {
    let ca = Pki::new("bad")?;
    let server = ca.server()?;
    let cert = server.cert.display().to_string();
    let key = server.key.display().to_string();
    let missing = format!("{cert}.absent");
    let (code, stderr) = run_node_to_exit(&["--tls-cert", &missing, "--tls-key", &key])?;
    ensure!(code == Some(2), "exit code {code:?}: {stderr}");
    ensure!(
        stderr.contains("tls-cert") && stderr.contains(&missing),
        "{stderr}"
    );
    // A certificate given as the key.
    let (code, stderr) = run_node_to_exit(&["--tls-cert", &cert, "--tls-key", &cert])?;
    ensure!(
        code == Some(2) && stderr.contains("tls-key"),
        "exit code {code:?}: {stderr}"
    );
    // A TLS listener without its key.
    let (code, stderr) = run_node_to_exit(&["--tls-cert", &cert])?;
    ensure!(
        code == Some(2) && stderr.contains("tls-key"),
        "exit code {code:?}: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_ca_requires_a_certificate_whose_cn_is_the_user() -> Result<()> {
    let ca = Pki::new("mtls")?;
    let other = Pki::new("other")?;
    let ca_file = ca.ca_file().display().to_string();
    // No anonymous clients and no password file: only certificates get in.
    let (node, tls_addr) = tls_node(
        &ca.server()?,
        &[
            ("--tls-client-ca", ca_file.as_str()),
            ("--allow-anonymous", "false"),
        ],
    )?;
    let alice = ca.client("alice")?;
    let mut client = TestClient::connect_with(tls_options(
        tls_addr,
        &unique_id("alice"),
        &ca,
        Some(&alice),
    )?)
    .await?;
    client.subscribe("mtls/echo", QoS::AtLeastOnce).await?;
    client
        .publish("mtls/echo", QoS::AtLeastOnce, false, b"hi".to_vec())
        .await?;
    ensure!(client.next_publish().await?.payload.as_ref() == b"hi");

    let refused = |identity: Option<&Identity>, issuer: &Pki| {
        tls_options(tls_addr, &unique_id("refused"), issuer, identity)
    };
    ensure!(
        TestClient::connect_with(refused(None, &ca)?).await.is_err(),
        "a client without a certificate was let in"
    );
    let mallory = other.client("mallory")?;
    // mallory trusts the server's CA but her certificate is from another.
    let options = refused(Some(&mallory), &ca)?;
    ensure!(
        TestClient::connect_with(options).await.is_err(),
        "a certificate from another CA was let in"
    );
    ensure!(tls_refusals(&node)? >= 2.0);
    Ok(())
}

/// Whether a TLS client trusting `ca` gets in at `addr`.
async fn connects(addr: SocketAddr, ca: &Pki) -> Result<bool> {
    let options = tls_options(addr, &unique_id("reload"), ca, None)?;
    Ok(TestClient::connect_with(options).await.is_ok())
}

#[tokio::test]
async fn sighup_reloads_the_certificates_and_keeps_them_when_the_new_files_are_bad() -> Result<()> {
    let first = Pki::new("first")?;
    let second = Pki::new("second")?;
    let server = first.server()?;
    let (node, tls_addr) = tls_node(&server, &[])?;
    ensure!(connects(tls_addr, &first).await?);
    ensure!(!connects(tls_addr, &second).await?);

    let replacement = second.server()?;
    std::fs::copy(&replacement.cert, &server.cert)?;
    std::fs::copy(&replacement.key, &server.key)?;
    node.signal(libc::SIGHUP)?;
    within("the reloaded certificate", async {
        while !connects(tls_addr, &second).await.unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    ensure!(
        !connects(tls_addr, &first).await?,
        "the old certificate is still served"
    );

    // Broken files: logged, and the certificate in use stays.
    std::fs::write(&server.cert, "not a certificate")?;
    node.signal(libc::SIGHUP)?;
    within("the failed reload logged", async {
        while !node.log().contains("TLS certificates not reloaded") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    ensure!(
        connects(tls_addr, &second).await?,
        "a bad reload dropped the certificate in use"
    );
    Ok(())
}

/// A proxy in front of `node` with a TLS listener using `server`; its
/// TLS address (announced on its own line, maybe after the plain one).
async fn tls_proxy(node: &NodeProcess, server: &Identity) -> Result<(ProxyProcess, SocketAddr)> {
    let cert = server.cert.display().to_string();
    let key = server.key.display().to_string();
    let backend = node.addr().to_string();
    let proxy = ProxyProcess::start(&[
        ("--backends", backend.as_str()),
        ("--tls-listen", "127.0.0.1:0"),
        ("--tls-cert", cert.as_str()),
        ("--tls-key", key.as_str()),
    ])?;
    let addr = within("the proxy's TLS listening line", async {
        loop {
            let found = proxy
                .log_tail()
                .lines()
                .find_map(|line| line.strip_prefix("astramq-proxy listening on mqtts://"))
                .and_then(|addr| addr.trim().parse::<SocketAddr>().ok());
            if let Some(addr) = found {
                return addr;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    Ok((proxy, addr))
}

/// Through the proxy's TLS port: rumqttc (3.1.1) both ways, mosquitto_sub
/// in MQTT 5.0; plain MQTT to that port is closed.
#[tokio::test]
async fn through_the_proxys_tls_port_rumqttc_and_mosquitto_connect_and_plain_mqtt_fails(
) -> Result<()> {
    let ca = Pki::new("proxy")?;
    let node = NodeProcess::start()?;
    let (proxy, tls_addr) = tls_proxy(&node, &ca.server()?).await?;
    let mut secure =
        TestClient::connect_with(tls_options(tls_addr, &unique_id("ptls"), &ca, None)?).await?;
    let mut plain = TestClient::connect(node.addr(), &unique_id("plain")).await?;
    round_trip(&mut secure, &mut plain, "ptls/in").await?;
    round_trip(&mut plain, &mut secure, "ptls/out").await?;

    mosquitto_sub_receives(tls_addr.port(), &ca, &mut plain, "mqttv5").await?;

    let mut raw = RawClient::connect_tcp(tls_addr).await?;
    raw.send(&Connect::new(&unique_id("raw")).encode()).await?;
    raw.expect_closed(TIMEOUT).await?;
    let metrics = Exposition::scrape(proxy.metrics)?;
    ensure!(
        metrics.total(
            "astramq_proxy_rejects_total",
            &[("reason", "tls_handshake")]
        ) >= 1.0,
        "the failed handshake was not counted"
    );
    round_trip(&mut secure, &mut plain, "ptls/after").await?;
    let (mut fresh, _) =
        RawClient::connected(proxy.addr, &Connect::new(&unique_id("fresh"))).await?;
    fresh.ping().await?;
    Ok(())
}

#[tokio::test]
async fn a_proxy_with_a_missing_tls_file_refuses_to_start_with_exit_code_2() -> Result<()> {
    let output = Command::new(proxy_binary()?)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backends",
            "127.0.0.1:1",
            "--tls-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-cert",
            "/nonexistent/astramq-cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2),
        "exit {:?}: {stderr}",
        output.status.code()
    );
    ensure!(
        stderr.contains("tls-cert") && stderr.contains("/nonexistent/astramq-cert.pem"),
        "{stderr}"
    );
    Ok(())
}
