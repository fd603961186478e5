//! MQTT 5.0 session expiry across the cluster (5.0 §3.1.2.11.2, §4.1): a
//! parked session ends its expiry interval after its client left, its
//! Redis keys carry that interval as their TTL (so nothing is left
//! behind), and a session whose node died ends its interval after the
//! survivor adopted it. Raw 5.0 packets, written from the standard.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use astramq_tests::wire::frame;
use astramq_tests::{unique_id, within_for, NodeProcess, RawClient, RedisProcess};

/// A 5.0 CONNECT: clean start 0, keep-alive 60, Session Expiry Interval
/// `expiry` seconds.
fn connect_v5(client_id: &str, expiry: u32) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x00, 0, 60];
    body.push(5); // property length
    body.push(0x11); // Session Expiry Interval
    body.extend(expiry.to_be_bytes());
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    frame(0x10, &body)
}

/// A 5.0 SUBSCRIBE of `filter` at QoS 1, no properties.
fn subscribe_v5(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1, 0];
    body.extend((filter.len() as u16).to_be_bytes());
    body.extend(filter.as_bytes());
    body.push(0x01);
    frame(0x82, &body)
}

/// Connects a 5.0 client; returns it and the CONNACK's session present.
async fn connect(node: &NodeProcess, client_id: &str, expiry: u32) -> Result<(RawClient, bool)> {
    let mut client = RawClient::connect_tcp(node.addr()).await?;
    client.send(&connect_v5(client_id, expiry)).await?;
    let connack = client.recv().await.context("waiting for CONNACK")?;
    ensure!(connack.first_byte == 0x20, "not a CONNACK: {connack:?}");
    ensure!(connack.body.get(1) == Some(&0), "refused: {connack:?}");
    Ok((client, connack.body[0] & 1 == 1))
}

fn start_node(redis: &RedisProcess, node_id: &str) -> Result<NodeProcess> {
    NodeProcess::start_named(
        node_id,
        &[
            ("--redis", &redis.url()),
            ("--heartbeat-interval-ms", "200"),
            ("--heartbeat-ttl-ms", "1000"),
            ("--redis-timeout-ms", "500"),
            ("--sys-interval", "0"),
        ],
    )
}

/// Milliseconds the session key of `client_id` has left (-1: no TTL, -2:
/// gone).
fn session_ttl(redis: &RedisProcess, client_id: &str) -> Result<i64> {
    let key = format!("astramq:s:{{{client_id}}}");
    Ok(redis.cli(&["PTTL", &key])?.trim().parse()?)
}

/// How many of `client_id`'s keys exist.
fn session_keys(redis: &RedisProcess, client_id: &str) -> Result<usize> {
    let pattern = format!("astramq:s:{{{client_id}}}*");
    Ok(redis
        .cli(&["KEYS", &pattern])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

async fn subscribed_and_parked(
    node: &NodeProcess,
    client_id: &str,
    expiry: u32,
) -> Result<RawClient> {
    let (mut client, present) = connect(node, client_id, expiry).await?;
    ensure!(!present, "a new session");
    client.send(&subscribe_v5("exp/#")).await?;
    let suback = client.recv().await?;
    ensure!(suback.first_byte == 0x90, "not a SUBACK: {suback:?}");
    Ok(client)
}

#[tokio::test]
async fn a_parked_session_and_its_redis_keys_expire_with_its_interval() -> Result<()> {
    let redis = RedisProcess::start()?;
    let a_id = unique_id("a");
    let a = start_node(&redis, &a_id)?;
    let b = start_node(&redis, &unique_id("b"))?;
    let id = unique_id("exp");
    let mut client = subscribed_and_parked(&a, &id, 3).await?;
    client.send(&[0xE0, 0x00]).await?; // DISCONNECT, normal
    client.expect_closed(Duration::from_secs(5)).await?;
    let ttl = within_for(Duration::from_secs(5), "the parked session's TTL", async {
        loop {
            let ttl = session_ttl(&redis, &id)?;
            if ttl > 0 {
                return Ok::<_, anyhow::Error>(ttl);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    ensure!(ttl <= 3_000, "TTL {ttl} ms is the expiry interval");
    // Within the interval it is still there, on any node...
    ensure!(
        session_keys(&redis, &id)? >= 2,
        "session and subscriptions kept"
    );
    let routes = format!("astramq:n:{{{a_id}}}:routes");
    let held = redis.cli(&["SMEMBERS", &routes])?;
    ensure!(held.contains("exp/#"), "routed while kept: {held:?}");
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    // ...after it, gone from Redis and from every node.
    ensure!(session_keys(&redis, &id)? == 0, "keys left after expiry");
    // The node that held it forgets it too (within a second of the
    // interval): its subscription leaves the cluster's routes.
    within_for(
        Duration::from_secs(5),
        "the holder to drop the route",
        async {
            while redis.cli(&["SMEMBERS", &routes])?.contains("exp/#") {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>(())
        },
    )
    .await??;
    let (_again, present) = connect(&b, &id, 3).await?;
    ensure!(!present, "an expired session is not resumed");
    Ok(())
}

#[tokio::test]
async fn a_reconnect_within_the_interval_keeps_the_session_and_clears_the_ttl() -> Result<()> {
    let redis = RedisProcess::start()?;
    let a = start_node(&redis, &unique_id("a"))?;
    let b = start_node(&redis, &unique_id("b"))?;
    let id = unique_id("keep");
    let mut client = subscribed_and_parked(&a, &id, 4).await?;
    client.send(&[0xE0, 0x00]).await?;
    client.expect_closed(Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_back, present) = connect(&b, &id, 4).await?;
    ensure!(present, "resumed within the interval on another node");
    ensure!(
        session_ttl(&redis, &id)? == -1,
        "a connected session has no TTL"
    );
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    ensure!(
        session_keys(&redis, &id)? >= 2,
        "a connected session does not expire"
    );
    Ok(())
}

#[tokio::test]
async fn a_session_whose_node_died_expires_after_its_adoption() -> Result<()> {
    let redis = RedisProcess::start()?;
    let mut a = start_node(&redis, &unique_id("a"))?;
    let b = start_node(&redis, &unique_id("b"))?;
    let id = unique_id("orphan");
    let _client = subscribed_and_parked(&a, &id, 3).await?;
    ensure!(session_ttl(&redis, &id)? == -1, "connected: no TTL");
    a.kill()?;
    // The survivor adopts it and gives its keys the interval: its client
    // left when its node died.
    within_for(
        Duration::from_secs(10),
        "the adoption to set the TTL",
        async {
            loop {
                if session_ttl(&redis, &id)? > 0 {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await??;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    ensure!(session_keys(&redis, &id)? == 0, "keys left after expiry");
    let (_again, present) = connect(&b, &id, 3).await?;
    ensure!(!present, "the adopter forgot the expired session");
    Ok(())
}
