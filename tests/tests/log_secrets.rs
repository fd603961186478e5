//! No secret or payload in the logs (issue 14, item 6): a node (at
//! `RUST_LOG=debug`, which includes everything `info` prints) with a Redis
//! URL holding a password, a password file and a gossip key, and a proxy (at
//! `RUST_LOG=info`) sharing that key, carry a client that logs in with a
//! password (and once with a wrong one) and publishes a distinctive payload
//! to itself through the proxy. Neither log may contain the passwords, the
//! gossip key, the Redis password or the payload.

use std::time::Duration;

use anyhow::{ensure, Result};
use astramq_tests::proxy::ProxyProcess;
use astramq_tests::users::{add_user, TempDir};
use astramq_tests::wire::{Connect, Publish};
use astramq_tests::{free_gossip_addr, unique_id, within, NodeProcess, RawClient, RedisProcess};

const PASSWORD: &str = "pw-Zq8tLm3xKv";
const WRONG_PASSWORD: &str = "pw-wrong-Hy7dNc2s";
const REDIS_PASSWORD: &str = "redispw-Rt5gWq9e";
const GOSSIP_KEY: &str = "c2VjcmV0LWdvc3NpcC1rZXktMzItYnl0ZXMtbG9uZyE=";
const PAYLOAD: &str = "payload-Mx4bVn8Jq";

#[tokio::test]
async fn passwords_keys_and_payloads_stay_out_of_the_logs() -> Result<()> {
    let redis = RedisProcess::start()?;
    redis.cli(&["CONFIG", "SET", "requirepass", REDIS_PASSWORD])?;
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}", redis.port());
    let dir = TempDir::new("astramq-log-secrets")?;
    let passwords = dir.join("passwords").display().to_string();
    add_user(&["--password-file", &passwords], "alice", PASSWORD)?;
    let gossip = free_gossip_addr()?.to_string();
    let node = NodeProcess::start_logging(
        "debug",
        &[
            ("--redis", &redis_url),
            ("--allow-anonymous", "false"),
            ("--password-file", &passwords),
            ("--gossip-listen", &gossip),
            ("--gossip-key", GOSSIP_KEY),
        ],
    )?;
    let proxy_gossip = free_gossip_addr()?.to_string();
    let proxy = ProxyProcess::start_with_env(
        &[
            ("--gossip-listen", &proxy_gossip),
            ("--join", &gossip),
            ("--gossip-key", GOSSIP_KEY),
        ],
        &[("RUST_LOG", "info")],
    )?;
    within("the proxy to learn the node", async {
        while !proxy.log_tail().contains("backend added") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;

    let id = unique_id("secrets");
    let (_, refused) = RawClient::handshake(
        proxy.addr,
        &Connect::new(&id).with_credentials("alice", WRONG_PASSWORD),
    )
    .await?;
    ensure!(
        refused.code == 0x04,
        "wrong password: CONNACK {}",
        refused.code
    );
    let connect = Connect::new(&id).with_credentials("alice", PASSWORD);
    let (mut client, _) = RawClient::connected(proxy.addr, &connect).await?;
    client.subscribe(1, &[("secrets/topic", 1)]).await?;
    client
        .send(&Publish::new("secrets/topic", 0, PAYLOAD.as_bytes()).encode())
        .await?;
    ensure!(client.recv_publish().await?.payload == PAYLOAD.as_bytes());
    drop(client);
    // Let the disconnect and its log lines happen.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = [
        ("node (debug)", node.log()),
        ("proxy (info)", proxy.log_tail()),
    ];
    for (name, log) in &logs {
        ensure!(
            log.contains("alice") || name.starts_with("proxy"),
            "{name}: no log of the client at all?\n{log}"
        );
        for secret in [
            PASSWORD,
            WRONG_PASSWORD,
            REDIS_PASSWORD,
            GOSSIP_KEY,
            PAYLOAD,
        ] {
            ensure!(!log.contains(secret), "{name} logged {secret:?}:\n{log}");
        }
    }
    Ok(())
}
