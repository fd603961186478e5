//! Authentication (issue 14, item 1), with real processes: CONNACK 0x04 for
//! bad credentials and 0x05 for none while anonymous clients are refused,
//! both counted; the password file (made with `astramq-node user add`,
//! reloaded on SIGHUP, refused at start-up when malformed); users in Redis
//! shared by the nodes of a cluster; credentials through the proxy; and
//! the per-address slow-down of repeated failures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use astramq_tests::binary::node_binary;
use astramq_tests::observability::cluster::node_metrics_addr;
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::proxy::ProxyProcess;
use astramq_tests::users::{add_user, remove_user, user_command, TempDir};
use astramq_tests::wire::Connect;
use astramq_tests::{unique_id, within, NodeProcess, RawClient, RedisProcess, TestClient};

const ALICE: &str = "alice";
const ALICE_PASSWORD: &str = "wonder land ünïcode";

/// A password file holding alice, in a directory removed on drop.
fn alice_file() -> Result<(TempDir, String)> {
    let dir = TempDir::new("astramq-auth")?;
    let path = dir.join("passwords").display().to_string();
    add_user(&["--password-file", &path], ALICE, ALICE_PASSWORD)?;
    Ok((dir, path))
}

/// A node refusing anonymous clients, with the users of `password_file`.
fn secured_node(password_file: &str, extra: &[(&str, &str)]) -> Result<NodeProcess> {
    let mut flags = vec![
        ("--allow-anonymous", "false"),
        ("--password-file", password_file),
        ("--metrics-listen", "127.0.0.1:0"),
    ];
    flags.extend_from_slice(extra);
    NodeProcess::start_with(&flags)
}

/// The CONNACK code `connect` gets from `addr`.
async fn connack_code(addr: SocketAddr, connect: &Connect) -> Result<u8> {
    Ok(RawClient::handshake(addr, connect).await?.1.code)
}

/// A CONNECT with `user` and `password`.
fn login(user: &str, password: &str) -> Connect {
    Connect::new(&unique_id("auth")).with_credentials(user, password)
}

/// Asks for `connect`, requires `code`, and requires the node to close the
/// connection after a refusal.
async fn expect_refused(addr: SocketAddr, connect: &Connect, code: u8) -> Result<()> {
    let (mut client, ack) = RawClient::handshake(addr, connect).await?;
    ensure!(
        ack.code == code,
        "CONNACK {} where {code} was due",
        ack.code
    );
    client.expect_closed(Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test]
async fn bad_or_missing_credentials_are_refused_counted_and_closed() -> Result<()> {
    let (_dir, file) = alice_file()?;
    let node = secured_node(&file, &[])?;
    let addr = node.addr();
    expect_refused(addr, &login(ALICE, "wrong"), 4).await?;
    expect_refused(addr, &login("mallory", ALICE_PASSWORD), 4).await?;
    let no_password = Connect::new(&unique_id("auth")).with_username(ALICE);
    expect_refused(addr, &no_password, 4).await?;
    expect_refused(addr, &Connect::new(&unique_id("anon")), 5).await?;
    // The right password is accepted and the session works.
    let (mut client, _) = RawClient::connected(addr, &login(ALICE, ALICE_PASSWORD)).await?;
    client.ping().await?;
    let metrics = Exposition::scrape(node_metrics_addr(&node)?)?;
    let refused =
        |reason| metrics.total("astramq_connections_refused_total", &[("reason", reason)]);
    ensure!(
        refused("bad_credentials") == 3.0,
        "bad_credentials = {}",
        refused("bad_credentials")
    );
    ensure!(
        refused("not_authorized") == 1.0,
        "not_authorized = {}",
        refused("not_authorized")
    );
    // Neither the password nor its hash reaches the log.
    let hash = std::fs::read_to_string(&file)?;
    let hash = hash.trim().split_once(':').context("a user line")?.1;
    let log = node.log();
    ensure!(!log.contains(ALICE_PASSWORD) && !log.contains("wrong") && !log.contains(hash));
    Ok(())
}

#[tokio::test]
async fn anonymous_clients_are_let_in_only_when_allowed() -> Result<()> {
    let (_dir, file) = alice_file()?;
    let open = secured_node(&file, &[])?;
    expect_refused(open.addr(), &Connect::new(&unique_id("anon")), 5).await?;
    drop(open);
    let node =
        NodeProcess::start_with(&[("--allow-anonymous", "true"), ("--password-file", &file)])?;
    let (mut client, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("anon"))).await?;
    client.ping().await?;
    // A user name is still checked: anonymous is not "anything goes".
    expect_refused(node.addr(), &login(ALICE, "wrong"), 4).await?;
    ensure!(connack_code(node.addr(), &login(ALICE, ALICE_PASSWORD)).await? == 0);
    // With no flag at all, anonymous clients are refused (the default).
    let mut strict = Command::new(node_binary()?);
    strict.args(["--listen", "127.0.0.1:0", "--help"]);
    let help = String::from_utf8(strict.output()?.stdout)?;
    ensure!(help.contains("--allow-anonymous <BOOL>") && help.contains("[default: false]"));
    Ok(())
}

#[tokio::test]
async fn rumqttc_with_credentials_connects() -> Result<()> {
    let (_dir, file) = alice_file()?;
    let node = secured_node(&file, &[])?;
    let mut options = TestClient::options(node.addr(), &unique_id("lib"));
    options.set_credentials(ALICE, ALICE_PASSWORD);
    let mut client = TestClient::connect_with(options).await?;
    client
        .subscribe("auth/echo", rumqttc::QoS::AtLeastOnce)
        .await?;
    client
        .publish("auth/echo", rumqttc::QoS::AtLeastOnce, false, "hi")
        .await?;
    let echoed = client.next_publish().await?;
    ensure!(echoed.payload.as_ref() == b"hi");
    let mut wrong = TestClient::options(node.addr(), &unique_id("lib"));
    wrong.set_credentials(ALICE, "nope");
    let refused = TestClient::connect_with(wrong).await;
    ensure!(
        refused.is_err(),
        "a wrong password connected through rumqttc"
    );
    Ok(())
}

#[tokio::test]
async fn the_password_file_is_reloaded_on_sighup_and_a_bad_one_is_ignored() -> Result<()> {
    let (_dir, file) = alice_file()?;
    let node = secured_node(&file, &[])?;
    ensure!(connack_code(node.addr(), &login("bob", "builder")).await? == 4);
    add_user(&["--password-file", &file], "bob", "builder")?;
    // `user add` kept alice's line.
    let (code, listed, _) = user_command(&["list", "--password-file", &file], "")?;
    ensure!(
        code == Some(0) && listed == "alice\nbob\n",
        "user list: {listed:?}"
    );
    node.signal(libc::SIGHUP)?;
    within("bob logs in after SIGHUP", async {
        while connack_code(node.addr(), &login("bob", "builder")).await? != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    // A malformed file is not taken: the old users stay, the node says so.
    std::fs::write(&file, "bob:builder-in-clear\n")?;
    node.signal(libc::SIGHUP)?;
    node.wait_for_log("password file not reloaded").await?;
    ensure!(
        node.log().contains("line 1"),
        "the log does not name the line"
    );
    ensure!(
        !node.log().contains("builder-in-clear"),
        "the bad line was logged"
    );
    ensure!(connack_code(node.addr(), &login(ALICE, ALICE_PASSWORD)).await? == 0);
    ensure!(connack_code(node.addr(), &login("bob", "builder")).await? == 0);
    Ok(())
}

#[tokio::test]
async fn a_malformed_password_file_refuses_start_up_with_exit_code_2() -> Result<()> {
    let dir = TempDir::new("astramq-auth")?;
    let path = dir.join("passwords");
    std::fs::write(&path, "# users\n\nalice\n")?;
    let (code, stderr) = run_node_to_exit(&path)?;
    ensure!(code == Some(2), "exit code {code:?}: {stderr}");
    ensure!(
        stderr.contains("password-file") && stderr.contains("line 3"),
        "{stderr}"
    );
    // A missing file is refused too.
    let (code, stderr) = run_node_to_exit(&dir.join("absent"))?;
    ensure!(code == Some(2), "exit code {code:?}: {stderr}");
    Ok(())
}

/// Starts a node with `--password-file path` and waits for it to exit.
fn run_node_to_exit(path: &Path) -> Result<(Option<i32>, String)> {
    NodeProcess::exit_of(&["--password-file".as_ref(), path.as_os_str()])
}

#[tokio::test]
async fn a_user_added_in_redis_logs_in_on_every_node_until_removed() -> Result<()> {
    let redis = RedisProcess::start()?;
    let url = redis.url();
    let flags = [
        ("--redis", url.as_str()),
        ("--allow-anonymous", "false"),
        ("--heartbeat-interval-ms", "200"),
        ("--heartbeat-ttl-ms", "1000"),
        ("--sys-interval", "0"),
    ];
    let a = NodeProcess::start_with(&flags)?;
    let b = NodeProcess::start_with(&flags)?;
    ensure!(connack_code(a.addr(), &login(ALICE, ALICE_PASSWORD)).await? == 4);
    add_user(&["--redis", &url], ALICE, ALICE_PASSWORD)?;
    let (code, listed, _) = user_command(&["list", "--redis", &url], "")?;
    ensure!(
        code == Some(0) && listed == "alice\n",
        "user list: {listed:?}"
    );
    for node in [&a, &b] {
        let (mut client, _) =
            RawClient::connected(node.addr(), &login(ALICE, ALICE_PASSWORD)).await?;
        client.ping().await?;
        expect_refused(node.addr(), &login(ALICE, "wrong"), 4).await?;
        expect_refused(node.addr(), &Connect::new(&unique_id("anon")), 5).await?;
    }
    remove_user(&["--redis", &url], ALICE)?;
    for node in [&a, &b] {
        expect_refused(node.addr(), &login(ALICE, ALICE_PASSWORD), 4).await?;
    }
    // Removing a user who is not there is an error.
    let (code, _, stderr) = user_command(&["remove", ALICE, "--redis", &url], "")?;
    ensure!(
        code == Some(1) && stderr.contains("no user alice"),
        "{code:?} {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn credentials_pass_through_the_proxy_unchanged() -> Result<()> {
    let (_dir, file) = alice_file()?;
    let node = secured_node(&file, &[])?;
    let backend = node.addr().to_string();
    let proxy = ProxyProcess::start(&[("--backends", backend.as_str())])?;
    let (mut client, _) = RawClient::connected(proxy.addr, &login(ALICE, ALICE_PASSWORD)).await?;
    client.ping().await?;
    ensure!(connack_code(proxy.addr, &login(ALICE, "wrong")).await? == 4);
    ensure!(connack_code(proxy.addr, &Connect::new(&unique_id("anon"))).await? == 5);
    Ok(())
}

#[tokio::test]
async fn a_burst_of_failures_from_one_address_is_slowed() -> Result<()> {
    let (_dir, file) = alice_file()?;
    let node = secured_node(&file, &[])?;
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let attempt = |source: IpAddr, password: &'static str| {
        let addr = node.addr();
        async move {
            let started = Instant::now();
            let mut client = RawClient::connect_tcp_from(addr, source).await?;
            client.send(&login(ALICE, password).encode()).await?;
            let code = client.recv().await?.connack()?.code;
            Ok::<_, anyhow::Error>((code, started.elapsed()))
        }
    };
    // Five failures are answered at once; the sixth waits 200 ms, the
    // seventh 400 ms, the eighth 800 ms (see node/src/auth/limiter.rs).
    for _ in 0..7 {
        ensure!(attempt(attacker, "guess").await?.0 == 4);
    }
    let (code, slowed) = attempt(attacker, "guess").await?;
    ensure!(
        code == 4 && slowed >= Duration::from_millis(800),
        "8th failure answered in {slowed:?}"
    );
    // A success from there is not held back, and does not reset the count:
    // the next failure waits longer still (1.6 s).
    let (code, success) = attempt(attacker, ALICE_PASSWORD).await?;
    ensure!(
        code == 0 && success < Duration::from_millis(800),
        "success answered in {success:?}"
    );
    let (code, later) = attempt(attacker, "guess").await?;
    ensure!(
        code == 4 && later >= Duration::from_millis(1600),
        "9th failure answered in {later:?}"
    );
    // Another address is not slowed.
    let (code, other) = attempt(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), "guess").await?;
    ensure!(
        code == 4 && other < Duration::from_millis(800),
        "another address waited {other:?}"
    );
    Ok(())
}
