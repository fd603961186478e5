//! Authorization (issue 14, item 2), with real processes: `--acl-file`
//! rules decide SUBACK slots (0x80 for a denied filter, the others of the
//! same SUBSCRIBE granted), which PUBLISHes are delivered (a denied one is
//! still acknowledged, and counted on /metrics), `%u` confines users, a
//! denied retained publish leaves the retained message alone, a denied
//! will is not published, SIGHUP reloads the rules (a bad file keeps the
//! old ones), a bad file refuses start-up, and in a cluster a denial holds
//! on the node a client moves to.
//!
//! User names are not verified here (anonymous clients are allowed and no
//! user source is configured, so the node takes the name as given): the
//! ACL only reads the name, and `tests/tests/auth.rs` covers its check.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use astramq_tests::observability::cluster::node_metrics_addr;
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::users::TempDir;
use astramq_tests::wire::{self, kind, Connect, Publish, Will};
use astramq_tests::{unique_id, within, NodeProcess, RawClient, RedisProcess, QUIET};

/// The example from the issue, with everything else allowed.
const EXAMPLE: &str = r#"
default = "allow"

[[rule]]
action = "subscribe"
topic = "test/nosubscribe"
permission = "deny"
"#;

/// A directory holding `acl.toml` with `rules`.
fn acl_file(rules: &str) -> Result<(TempDir, String)> {
    let dir = TempDir::new("astramq-acl")?;
    let path = dir.join("acl.toml");
    std::fs::write(&path, rules)?;
    Ok((dir, path.display().to_string()))
}

/// A node with the ACL at `path` and a metrics endpoint.
fn node_with(path: &str, extra: &[(&str, &str)]) -> Result<NodeProcess> {
    let mut flags = vec![("--acl-file", path), ("--metrics-listen", "127.0.0.1:0")];
    flags.extend_from_slice(extra);
    NodeProcess::start_with(&flags)
}

/// A client calling itself `user`, connected with a clean session.
async fn as_user(node: &NodeProcess, user: &str) -> Result<RawClient> {
    let connect = Connect::new(&unique_id(user)).with_username(user);
    Ok(RawClient::connected(node.addr(), &connect).await?.0)
}

/// Publishes at QoS 1 and requires its PUBACK.
async fn publish_acked(client: &mut RawClient, publish: Publish) -> Result<()> {
    let id = publish.packet_id;
    client.send(&publish.encode()).await?;
    let acked = client.recv().await?.ack_id(kind::PUBACK)?;
    ensure!(acked == id, "PUBACK for {acked}, expected {id}");
    Ok(())
}

/// Requires the next PUBLISH `client` receives to be on `topic` with
/// `payload` (anything denied before it would have come first).
async fn expect_next(client: &mut RawClient, topic: &str, payload: &[u8]) -> Result<()> {
    let publish = client.recv_publish().await?;
    ensure!(
        publish.topic_str() == topic && publish.payload == payload,
        "got {publish:?}, expected {topic} {payload:?}"
    );
    Ok(())
}

/// `astramq_acl_denials_total{action}` on `node`.
fn denials(node: &NodeProcess, action: &str) -> Result<f64> {
    let metrics = Exposition::scrape(node_metrics_addr(node)?)?;
    Ok(metrics.total("astramq_acl_denials_total", &[("action", action)]))
}

#[tokio::test]
async fn the_example_rule_denies_its_filter_and_the_others_are_granted() -> Result<()> {
    let (_dir, path) = acl_file(EXAMPLE)?;
    let node = node_with(&path, &[])?;
    let mut client = as_user(&node, "anyone").await?;
    let codes = client
        .subscribe(
            1,
            &[("test/nosubscribe", 1), ("test/other", 1), ("test/#", 0)],
        )
        .await?;
    // `test/#` shares a topic with the denied filter: refused too.
    ensure!(codes == [0x80, 1, 0x80], "SUBACK {codes:x?}");
    // Publishing is not subscribing: allowed and delivered.
    publish_acked(&mut client, Publish::new("test/other", 1, b"hi")).await?;
    expect_next(&mut client, "test/other", b"hi").await?;
    ensure!(denials(&node, "subscribe")? == 2.0);
    Ok(())
}

#[tokio::test]
async fn a_denied_publish_is_acknowledged_not_delivered_and_counted() -> Result<()> {
    let rules = r#"
        default = "allow"
        [[rule]]
        action = "publish"
        topic = "secret/#"
        permission = "deny"
    "#;
    let (_dir, path) = acl_file(rules)?;
    let node = node_with(&path, &[])?;
    let mut watcher = as_user(&node, "watcher").await?;
    let codes = watcher
        .subscribe(1, &[("secret/#", 2), ("open/#", 2)])
        .await?;
    ensure!(codes == [2, 2], "SUBACK {codes:x?}");
    let mut publisher = as_user(&node, "publisher").await?;
    publisher
        .send(&Publish::new("secret/0", 0, b"q0").encode())
        .await?;
    publish_acked(&mut publisher, Publish::new("secret/1", 1, b"q1")).await?;
    // QoS 2: PUBREC, then PUBCOMP for the PUBREL, as for any publish.
    publisher
        .send(
            &Publish::new("secret/2", 2, b"q2")
                .with_packet_id(7)
                .encode(),
        )
        .await?;
    ensure!(publisher.recv().await?.ack_id(kind::PUBREC)? == 7);
    publisher.send(&wire::pubrel(7)).await?;
    ensure!(publisher.recv().await?.ack_id(kind::PUBCOMP)? == 7);
    publish_acked(&mut publisher, Publish::new("open/done", 1, b"end")).await?;
    // The allowed publish came last: nothing denied arrived before it.
    expect_next(&mut watcher, "open/done", b"end").await?;
    ensure!(denials(&node, "publish")? == 3.0);
    Ok(())
}

#[tokio::test]
async fn a_user_rule_confines_alice_to_her_own_topics() -> Result<()> {
    let rules = r#"
        [[rule]]
        action = "all"
        topic = "users/%u/#"
        permission = "allow"
    "#;
    let (_dir, path) = acl_file(rules)?;
    let node = node_with(&path, &[])?;
    let mut bob = as_user(&node, "bob").await?;
    ensure!(bob.subscribe(1, &[("users/bob/#", 0)]).await? == [0]);
    let mut alice = as_user(&node, "alice").await?;
    let codes = alice
        .subscribe(
            1,
            &[("users/alice/#", 0), ("users/bob/#", 0), ("users/#", 0)],
        )
        .await?;
    ensure!(codes == [0, 0x80, 0x80], "SUBACK {codes:x?}");
    publish_acked(&mut alice, Publish::new("users/bob/x", 1, b"intrusion")).await?;
    publish_acked(&mut alice, Publish::new("users/alice/x", 1, b"mine")).await?;
    expect_next(&mut alice, "users/alice/x", b"mine").await?;
    bob.expect_quiet(QUIET).await?;
    // A name that looks like a wildcard is only a name.
    let mut plus = as_user(&node, "+").await?;
    ensure!(plus.subscribe(1, &[("users/+/#", 0)]).await? == [0x80]);
    // Without a user name, `%u` rules never apply (default: deny).
    let (mut anonymous, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("anon"))).await?;
    ensure!(anonymous.subscribe(1, &[("users//#", 0)]).await? == [0x80]);
    Ok(())
}

#[tokio::test]
async fn retained_messages_and_wills_obey_the_rules() -> Result<()> {
    let rules = r#"
        default = "allow"
        [[rule]]
        action = "publish"
        topic = "locked/#"
        user = "admin"
        permission = "allow"
        [[rule]]
        action = "publish"
        topic = "locked/#"
        permission = "deny"
        [[rule]]
        action = "subscribe"
        topic = "hidden/#"
        permission = "deny"
    "#;
    let (_dir, path) = acl_file(rules)?;
    let node = node_with(&path, &[])?;
    let mut admin = as_user(&node, "admin").await?;
    publish_acked(
        &mut admin,
        Publish::new("locked/state", 1, b"v1").with_retain(),
    )
    .await?;
    publish_acked(&mut admin, Publish::new("hidden/x", 1, b"h").with_retain()).await?;
    let mut mallory = as_user(&node, "mallory").await?;
    publish_acked(
        &mut mallory,
        Publish::new("locked/state", 1, b"v2").with_retain(),
    )
    .await?;
    // An empty retained publish would clear it: denied too.
    publish_acked(
        &mut mallory,
        Publish::new("locked/state", 1, b"").with_retain(),
    )
    .await?;
    let mut reader = as_user(&node, "reader").await?;
    let codes = reader
        .subscribe(1, &[("#", 0), ("locked/state", 0)])
        .await?;
    ensure!(codes == [0x80, 0], "SUBACK {codes:x?}");
    // Only the granted filter's retained message, and the admin's value.
    let retained = reader.recv_publish().await?;
    ensure!(retained.payload == b"v1" && retained.retain, "{retained:?}");
    reader.expect_quiet(QUIET).await?;
    // A will on a topic the client may not publish to is dropped.
    let mut watcher = as_user(&node, "watcher").await?;
    ensure!(
        watcher
            .subscribe(1, &[("locked/will", 0), ("open/will", 0)])
            .await?
            == [0, 0]
    );
    for (user, topic) in [("mallory", "locked/will"), ("mallory", "open/will")] {
        let connect = Connect::new(&unique_id(user))
            .with_username(user)
            .with_will(Will::new(topic, b"gone"));
        let (client, _) = RawClient::connected(node.addr(), &connect).await?;
        drop(client); // no DISCONNECT: the will is due
    }
    expect_next(&mut watcher, "open/will", b"gone").await?;
    watcher.expect_quiet(QUIET).await?;
    ensure!(denials(&node, "will")? == 1.0);
    ensure!(denials(&node, "publish")? == 2.0);
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_the_rules_and_a_bad_file_keeps_them() -> Result<()> {
    let (_dir, path) = acl_file(EXAMPLE)?;
    let node = node_with(&path, &[])?;
    let mut client = as_user(&node, "c").await?;
    ensure!(client.subscribe(1, &[("test/nosubscribe", 0)]).await? == [0x80]);
    std::fs::write(&path, "default = \"allow\"\n")?;
    node.signal(libc::SIGHUP)?;
    within("the reloaded rules grant the filter", async {
        let mut id = 2;
        while client.subscribe(id, &[("test/nosubscribe", 0)]).await? != [0] {
            id += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    std::fs::write(&path, "[[rule]]\naction = \"subscribe\"\n")?;
    node.signal(libc::SIGHUP)?;
    node.wait_for_log("ACL file not reloaded").await?;
    ensure!(client.subscribe(100, &[("test/nosubscribe", 0)]).await? == [0]);
    Ok(())
}

#[tokio::test]
async fn an_invalid_or_missing_acl_file_refuses_start_up_with_exit_code_2() -> Result<()> {
    let dir = TempDir::new("astramq-acl")?;
    let path = dir.join("acl.toml");
    std::fs::write(
        &path,
        "[[rule]]\naction = \"subscribe\"\ntopic = \"a/#/b\"\npermission = \"deny\"\n",
    )?;
    let (code, stderr) = run_node_to_exit(&path)?;
    ensure!(code == Some(2), "exit code {code:?}: {stderr}");
    ensure!(
        stderr.contains("acl-file") && stderr.contains("rule 1"),
        "{stderr}"
    );
    std::fs::write(&path, "[[rule]]\naction = \"read\"\n")?;
    let (code, stderr) = run_node_to_exit(&path)?;
    ensure!(
        code == Some(2) && stderr.contains("acl-file"),
        "{code:?}: {stderr}"
    );
    let (code, stderr) = run_node_to_exit(&dir.join("absent"))?;
    ensure!(
        code == Some(2) && stderr.contains("acl-file"),
        "{code:?}: {stderr}"
    );
    Ok(())
}

/// Starts a node with `--acl-file path` and waits for it to exit.
fn run_node_to_exit(path: &Path) -> Result<(Option<i32>, String)> {
    NodeProcess::exit_of(&["--acl-file".as_ref(), path.as_os_str()])
}

#[tokio::test]
async fn in_a_cluster_a_denial_holds_on_the_node_a_client_moves_to() -> Result<()> {
    let rules = r#"
        default = "allow"
        [[rule]]
        action = "publish"
        topic = "secret/#"
        permission = "deny"
        [[rule]]
        action = "subscribe"
        topic = "private/#"
        permission = "deny"
    "#;
    let (_dir, path) = acl_file(rules)?;
    let redis = RedisProcess::start()?;
    let url = redis.url();
    let flags = [
        ("--redis", url.as_str()),
        ("--heartbeat-interval-ms", "200"),
        ("--heartbeat-ttl-ms", "1000"),
        ("--sys-interval", "0"),
    ];
    let a = node_with(&path, &flags)?;
    let b = node_with(&path, &flags)?;
    // Anonymous: with Redis, user names are checked against its users.
    let (mut watcher, _) = RawClient::connected(a.addr(), &Connect::new(&unique_id("w"))).await?;
    ensure!(
        watcher
            .subscribe(1, &[("secret/#", 1), ("open/#", 1)])
            .await?
            == [1, 1]
    );
    let connect = Connect::new(&unique_id("mover")).with_clean_session(false);
    let (mut mover, _) = RawClient::connected(a.addr(), &connect).await?;
    ensure!(
        mover
            .subscribe(1, &[("private/x", 1), ("mine/x", 1)])
            .await?
            == [0x80, 1]
    );
    publish_acked(&mut mover, Publish::new("secret/a", 1, b"from a")).await?;
    mover.send(&wire::disconnect()).await?;
    drop(mover);
    // The same persistent session, now on node B.
    let (mut mover, present) = RawClient::connected(b.addr(), &connect).await?;
    ensure!(present, "the session did not move to node B");
    ensure!(mover.subscribe(2, &[("private/#", 1)]).await? == [0x80]);
    publish_acked(&mut mover, Publish::new("secret/b", 1, b"from b")).await?;
    publish_acked(&mut mover, Publish::new("open/done", 1, b"end")).await?;
    // Delivered across nodes, and nothing denied before it.
    let done = watcher.recv_publish().await?;
    ensure!(done.topic_str() == "open/done", "got {done:?}");
    ensure!(denials(&a, "publish")? == 1.0 && denials(&b, "publish")? == 1.0);
    ensure!(denials(&a, "subscribe")? == 1.0 && denials(&b, "subscribe")? == 1.0);
    Ok(())
}

#[tokio::test]
async fn a_resumed_session_keeps_only_the_subscriptions_the_rules_now_allow() -> Result<()> {
    let (_dir, path) = acl_file("default = \"allow\"\n")?;
    let node = node_with(&path, &[])?;
    let connect = Connect::new(&unique_id("keeper")).with_clean_session(false);
    let (mut keeper, _) = RawClient::connected(node.addr(), &connect).await?;
    ensure!(keeper.subscribe(1, &[("p/x", 0), ("s", 0)]).await? == [0, 0]);
    keeper.send(&wire::disconnect()).await?;
    drop(keeper);
    std::fs::write(
        &path,
        "default = \"allow\"\n[[rule]]\naction = \"subscribe\"\ntopic = \"p/#\"\npermission = \"deny\"\n",
    )?;
    node.signal(libc::SIGHUP)?;
    node.wait_for_log("ACL file reloaded").await?;
    let (mut keeper, present) = RawClient::connected(node.addr(), &connect).await?;
    ensure!(present, "the session was not resumed");
    let mut publisher = as_user(&node, "publisher").await?;
    publish_acked(&mut publisher, Publish::new("p/x", 1, b"old grant")).await?;
    publish_acked(&mut publisher, Publish::new("s", 1, b"sentinel")).await?;
    expect_next(&mut keeper, "s", b"sentinel").await?;
    ensure!(denials(&node, "subscribe")? == 1.0);
    Ok(())
}
