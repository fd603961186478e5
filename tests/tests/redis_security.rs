//! Redis over TLS and with ACL users (issue 14): nodes reach a
//! `redis-server` that speaks only TLS (`rediss://`, `--redis-ca`, client
//! certificates for `tls-auth-clients yes`) or that has its `default` user
//! off and an ACL user named in the URL, and serve a cluster through it as
//! through plain Redis: cross-node QoS 1, persistent sessions, users added
//! with `astramq-node user add --redis`. A certificate from the wrong CA or
//! a wrong password stops start-up with an error that says so, and the
//! password is in no log line or message.

mod tls_pki;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use astramq_tests::binary::node_binary;
use astramq_tests::users::{add_user, user_command};
use astramq_tests::{
    unique_id, within, NodeProcess, RedisProcess, RedisSetup, RedisTls, TestClient,
};
use rumqttc::QoS;
use tls_pki::Pki;

/// The ACL user's password: distinctive, so a log holding it is found.
const REDIS_PASSWORD: &str = "redis-acl-pw-Kq7zVx3m";

/// How long a node that cannot use its Redis settings may take to say so
/// and exit (well under the harness's 10 s readiness limit).
const REFUSAL: Duration = Duration::from_secs(5);

/// Flags every node here runs with, besides `--redis`.
fn cluster_flags<'a>(redis: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut flags = vec![
        ("--redis", redis),
        ("--redis-timeout-ms", "500"),
        ("--heartbeat-interval-ms", "200"),
        ("--heartbeat-ttl-ms", "1000"),
        ("--sys-interval", "0"),
    ];
    flags.extend_from_slice(extra);
    flags
}

/// A QoS 1 publish on `a` reaches a persistent subscriber on `b`; the
/// subscriber leaves, a second publish is queued for it, and it resumes
/// its session on `a` and gets that one.
async fn cross_node_qos1_and_a_persistent_session(
    a: &NodeProcess,
    b: &NodeProcess,
    topic: &str,
) -> Result<()> {
    let sub_id = unique_id("sub");
    let mut options = TestClient::options(b.addr(), &sub_id);
    options.set_clean_session(false);
    let mut sub = TestClient::connect_with(options).await?;
    sub.subscribe(&format!("{topic}/#"), QoS::AtLeastOnce)
        .await?;
    let mut publisher = TestClient::connect(a.addr(), &unique_id("pub")).await?;
    let probe = format!("{topic}/probe");
    within("the subscription to reach the publisher's node", async {
        loop {
            publisher
                .publish(&probe, QoS::AtMostOnce, false, "probe")
                .await?;
            let seen = sub.next_publish_within(Duration::from_millis(100)).await?;
            if seen.is_some_and(|p| p.topic == probe) {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await??;
    let first = format!("{topic}/first");
    publisher
        .publish(&first, QoS::AtLeastOnce, false, "one")
        .await?;
    let got = within("the QoS 1 publish on the other node", async {
        loop {
            let p = sub.next_publish().await?;
            if p.topic == first {
                return Ok::<_, anyhow::Error>(p);
            }
        }
    })
    .await??;
    ensure!(got.payload.as_ref() == b"one", "payload {:?}", got.payload);
    sub.disconnect().await?;

    let second = format!("{topic}/second");
    publisher
        .publish(&second, QoS::AtLeastOnce, false, "two")
        .await?;
    let mut options = TestClient::options(a.addr(), &sub_id);
    options.set_clean_session(false);
    let mut resumed = TestClient::connect_with(options).await?;
    ensure!(resumed.session_present(), "the session did not survive");
    let got = within("the queued publish after resuming", async {
        loop {
            let p = resumed.next_publish().await?;
            if p.topic == second {
                return Ok::<_, anyhow::Error>(p);
            }
        }
    })
    .await??;
    ensure!(got.payload.as_ref() == b"two", "payload {:?}", got.payload);
    Ok(())
}

/// Starts a node that is expected to refuse its Redis settings; returns
/// its output, after checking it ended quickly.
fn refused_start(flags: &[(&str, &str)]) -> Result<String> {
    // Built (once per test process) before the clock starts.
    node_binary()?;
    let started = Instant::now();
    match NodeProcess::start_with(flags) {
        Ok(node) => Err(anyhow::anyhow!("the node started:\n{}", node.log_tail())),
        Err(error) => {
            ensure!(
                started.elapsed() < REFUSAL,
                "the node took {:?} to give up (retrying what cannot succeed?): {error:#}",
                started.elapsed()
            );
            Ok(format!("{error:#}"))
        }
    }
}

/// A TLS-only Redis that wants client certificates: two nodes with
/// `--redis-ca`, `--redis-cert` and `--redis-key` carry QoS 1 across and a
/// persistent session, and `user add` over `rediss://` adds a user.
#[tokio::test]
async fn nodes_share_a_tls_redis_with_client_certificates() -> Result<()> {
    let pki = Pki::new("redis-tls")?;
    let server = pki.server()?;
    let client = pki.client("astramq-node")?;
    let redis = RedisProcess::start_with(RedisSetup {
        tls: Some(RedisTls {
            cert: server.cert.clone(),
            key: server.key.clone(),
            ca: pki.ca_file(),
            client: Some((client.cert.clone(), client.key.clone())),
        }),
        ..RedisSetup::default()
    })?;
    let url = redis.url();
    ensure!(url.starts_with("rediss://"), "{url}");
    let ca = pki.ca_file().display().to_string();
    let cert = client.cert.display().to_string();
    let key = client.key.display().to_string();
    let tls = [
        ("--redis-ca", ca.as_str()),
        ("--redis-cert", cert.as_str()),
        ("--redis-key", key.as_str()),
    ];
    let a = NodeProcess::start_with(&cluster_flags(&url, &tls))?;
    let b = NodeProcess::start_with(&cluster_flags(&url, &tls))?;
    cross_node_qos1_and_a_persistent_session(&a, &b, "tls").await?;

    let target = [
        "--redis",
        &url,
        "--redis-ca",
        &ca,
        "--redis-cert",
        &cert,
        "--redis-key",
        &key,
    ];
    add_user(&target, "carol", "carol-pw")?;
    let mut list = vec!["list"];
    list.extend_from_slice(&target);
    let (code, listed, err) = user_command(&list, "")?;
    ensure!(
        code == Some(0) && listed.lines().any(|l| l == "carol"),
        "{listed}{err}"
    );
    ensure!(
        redis.cli(&["HEXISTS", "astramq:users", "carol"])?.trim() == "1",
        "carol is not in Redis"
    );
    Ok(())
}

/// A node whose `--redis-ca` did not sign Redis's certificate exits at
/// once with an error naming TLS; a node without a client certificate is
/// refused by a Redis that wants one; TLS files with a `redis://` URL are
/// a configuration error.
#[tokio::test]
async fn a_wrong_ca_or_a_missing_client_certificate_refuses_start_up() -> Result<()> {
    let pki = Pki::new("redis-right")?;
    let other = Pki::new("redis-other")?;
    let server = pki.server()?;
    let client = pki.client("astramq-node")?;
    let redis = RedisProcess::start_with(RedisSetup {
        tls: Some(RedisTls {
            cert: server.cert.clone(),
            key: server.key.clone(),
            ca: pki.ca_file(),
            client: Some((client.cert.clone(), client.key.clone())),
        }),
        ..RedisSetup::default()
    })?;
    let url = redis.url();
    let wrong_ca = other.ca_file().display().to_string();
    let cert = client.cert.display().to_string();
    let key = client.key.display().to_string();
    let output = refused_start(&cluster_flags(
        &url,
        &[
            ("--redis-ca", &wrong_ca),
            ("--redis-cert", &cert),
            ("--redis-key", &key),
        ],
    ))?;
    ensure!(
        output.contains("TLS handshake with Redis failed") && output.contains("UnknownIssuer"),
        "no TLS error:\n{output}"
    );

    let ca = pki.ca_file().display().to_string();
    let output = refused_start(&cluster_flags(&url, &[("--redis-ca", &ca)]))?;
    ensure!(output.contains("TLS"), "no TLS error:\n{output}");

    let plain = format!("redis://127.0.0.1:{}", redis.port());
    let (code, stderr) = NodeProcess::exit_of(&[
        "--redis".as_ref(),
        plain.as_ref(),
        "--redis-ca".as_ref(),
        ca.as_ref(),
    ])?;
    ensure!(code == Some(2), "exit code {code:?}: {stderr}");
    ensure!(
        stderr.contains("redis-ca: needs a rediss:// URL"),
        "{stderr}"
    );
    Ok(())
}

/// A Redis whose `default` user is off and whose ACL user may touch only
/// AstraMQ's keys, with no dangerous commands: two nodes with
/// `redis://astra:PASSWORD@...` carry QoS 1 across and a persistent
/// session, `user add` with that URL adds a user another node lets in, a
/// wrong password (or none) stops start-up and `user add` with a clear
/// error, and the password is in no log line or message.
#[tokio::test]
async fn an_acl_user_in_the_url_serves_the_cluster_and_the_user_command() -> Result<()> {
    let redis = RedisProcess::start_with(RedisSetup {
        args: [
            "--user",
            "default",
            "off",
            "--user",
            "astra",
            "on",
            &format!(">{REDIS_PASSWORD}"),
            "~astramq:*",
            "~{astramq:*",
            "+@all",
            "-@dangerous",
        ]
        .map(str::to_owned)
        .to_vec(),
        cli_auth: Some(("astra".to_owned(), REDIS_PASSWORD.to_owned())),
        ..RedisSetup::default()
    })?;
    ensure!(
        redis.cli(&["ACL", "WHOAMI"])?.trim() == "astra",
        "redis-cli is not logged in as astra"
    );
    let url = redis.url_with_credentials("astra", REDIS_PASSWORD);
    let a = NodeProcess::start_logging("debug", &cluster_flags(&url, &[]))?;
    let b = NodeProcess::start_with(&cluster_flags(&url, &[]))?;
    cross_node_qos1_and_a_persistent_session(&a, &b, "acl").await?;

    add_user(&["--redis", &url], "dave", "dave-pw")?;
    let mut options = TestClient::options(b.addr(), &unique_id("dave"));
    options.set_credentials("dave", "dave-pw");
    TestClient::connect_with(options)
        .await?
        .disconnect()
        .await?;
    let mut options = TestClient::options(b.addr(), &unique_id("dave"));
    options.set_credentials("dave", "not-daves-pw");
    ensure!(
        TestClient::connect_with(options).await.is_err(),
        "a wrong MQTT password was let in: the user check is not running"
    );

    let wrong = redis.url_with_credentials("astra", "not-the-password");
    let output = refused_start(&cluster_flags(&wrong, &[]))?;
    ensure!(
        output.contains("Redis refused the user name or password"),
        "no authentication error:\n{output}"
    );
    ensure!(
        !output.contains("not-the-password"),
        "the password was shown:\n{output}"
    );
    let output = refused_start(&cluster_flags(&redis.url(), &[]))?;
    ensure!(
        output.contains("NOAUTH"),
        "no authentication error:\n{output}"
    );
    let (code, _, stderr) = user_command(&["add", "erin", "--redis", &wrong], "erin-pw\n")?;
    ensure!(
        code == Some(1),
        "user add with a wrong password: {code:?} {stderr}"
    );
    ensure!(
        stderr.contains("Redis refused the user name or password"),
        "{stderr}"
    );
    ensure!(!stderr.contains("not-the-password"), "{stderr}");

    for (name, log) in [("node a (debug)", a.log()), ("node b (info)", b.log())] {
        ensure!(
            log.contains("connected to Redis"),
            "{name}: no Redis log line:\n{log}"
        );
        ensure!(
            !log.contains(REDIS_PASSWORD),
            "{name} logged the Redis password:\n{log}"
        );
    }
    Ok(())
}
