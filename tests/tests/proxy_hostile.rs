//! Hostile clients against `astramq-proxy`: connection caps (total and per
//! address), the new-connection rate, the CONNECT deadline against silent
//! and dribbling (slowloris) clients, client-supplied strings in its log,
//! and nonsensical limits at start-up.
//!
//! Real proxy and node processes on loopback. Hostile sockets are raw
//! ([`RawClient`]), opened from different loopback addresses (127.0.0.2,
//! ...) when a test needs several clients by address; a bystander — the
//! independent rumqttc client, through the proxy from 127.0.0.1 — must keep
//! getting its messages throughout. Each test is bounded (a few seconds;
//! well under 20 s on the 2-core machine).

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use astramq_tests::binary::proxy_binary;
use astramq_tests::bystander::Bystander;
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::proxy::ProxyProcess;
use astramq_tests::wire::Connect;
use astramq_tests::{unique_id, within_for, NodeProcess, RawClient, TIMEOUT};
use tokio::task::JoinSet;

/// A socket refused by an admission limit is closed on accept; this bounds
/// "at once" generously for a loaded machine (the connect timeout in these
/// tests is 10 s, so a close this early cannot be the timeout).
const AT_ONCE: Duration = Duration::from_secs(1);

/// `127.0.0.n`: a client address of its own.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A node, and a proxy in front of it with `flags`.
fn start(flags: &[(&str, &str)]) -> Result<(NodeProcess, ProxyProcess)> {
    let node = NodeProcess::start()?;
    let backend = node.addr().to_string();
    let mut all = vec![("--backends", backend.as_str())];
    all.extend_from_slice(flags);
    let proxy = ProxyProcess::start(&all)?;
    Ok((node, proxy))
}

/// One scrape of the proxy's metrics.
fn scrape(proxy: &ProxyProcess) -> Result<Exposition> {
    Exposition::scrape(proxy.metrics)
}

/// `astramq_proxy_rejects_total{reason}`.
fn rejects(proxy: &ProxyProcess, reason: &str) -> Result<f64> {
    Ok(scrape(proxy)?.total("astramq_proxy_rejects_total", &[("reason", reason)]))
}

/// Waits until the proxy holds exactly `count` client sockets.
async fn wait_for_sockets(proxy: &ProxyProcess, count: usize, limit: Duration) -> Result<()> {
    let what = format!("the proxy to hold {count} client sockets");
    let mut last = f64::NAN;
    within_for(limit, &what, async {
        loop {
            last = scrape(proxy)?.total("astramq_proxy_client_sockets", &[]);
            if last == count as f64 {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("last seen: {last}"))?
}

/// The proxy's resident memory, KiB (`VmRSS` in `/proc/PID/status`).
fn rss_kib(proxy: &ProxyProcess) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id()))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// A full MQTT session through the proxy from `source`: CONNACK 0 required.
async fn session_from(proxy: &ProxyProcess, source: IpAddr) -> Result<RawClient> {
    let mut client = RawClient::connect_tcp_from(proxy.addr, source).await?;
    client
        .send(&Connect::new(&unique_id("from")).encode())
        .await?;
    let ack = client
        .recv()
        .await
        .context("waiting for CONNACK")?
        .connack()?;
    ensure!(ack.code == 0, "CONNACK {ack:?}");
    Ok(client)
}

/// A socket from `source` that sends nothing (it holds a slot until the
/// connect timeout).
async fn idle_from(proxy: &ProxyProcess, source: IpAddr) -> Result<RawClient> {
    RawClient::connect_tcp_from(proxy.addr, source).await
}

/// Requires a new socket from `source` to be closed at once, before it
/// sent anything.
async fn refused_from(proxy: &ProxyProcess, source: IpAddr) -> Result<()> {
    let mut client = RawClient::connect_tcp_from(proxy.addr, source).await?;
    client
        .expect_closed(AT_ONCE)
        .await
        .with_context(|| format!("a socket from {source} was not refused at once"))?;
    Ok(())
}

/// Over `--max-connections-per-ip` one address's new sockets are closed on
/// accept while other addresses still get in; over `--max-connections`
/// everyone's are; a closed socket frees its slot. The bystander's
/// messages keep flowing, and each refusal is counted by reason.
#[tokio::test]
async fn sockets_over_the_caps_are_closed_at_once_while_a_client_keeps_its_messages() -> Result<()>
{
    let (_node, proxy) = start(&[
        ("--max-connections", "10"),
        ("--max-connections-per-ip", "4"),
    ])?;
    let mut bystander = Bystander::join(proxy.addr).await?; // 2 sockets from 127.0.0.1
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(idle_from(&proxy, loopback(1)).await?);
    }
    wait_for_sockets(&proxy, 4, TIMEOUT).await?;
    refused_from(&proxy, loopback(1)).await?;
    bystander.still_served().await?;

    // Other addresses are not held back by 127.0.0.1's cap.
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session_from(&proxy, loopback(2)).await?);
    }
    for _ in 0..2 {
        held.push(idle_from(&proxy, loopback(3)).await?);
    }
    wait_for_sockets(&proxy, 10, TIMEOUT).await?;
    // The total cap: 127.0.0.3 holds only two, 127.0.0.4 none.
    refused_from(&proxy, loopback(3)).await?;
    refused_from(&proxy, loopback(4)).await?;
    bystander.still_served().await?;
    for session in &mut sessions {
        session.ping().await?;
    }

    ensure!(rejects(&proxy, "connections_per_ip")? == 1.0);
    ensure!(rejects(&proxy, "connections")? == 2.0);

    // A closed socket gives its slot back.
    drop(sessions.pop());
    wait_for_sockets(&proxy, 9, TIMEOUT).await?;
    let mut late = session_from(&proxy, loopback(4)).await?;
    late.ping().await?;
    bystander.still_served().await
}

/// `--max-connection-rate 10`: of a burst of 40 new sockets about one
/// second's worth is admitted and the rest closed on accept (counted as
/// `connection_rate`); a second later new clients get in again.
#[tokio::test]
async fn sockets_beyond_the_rate_are_closed_at_once_and_admitted_again_later() -> Result<()> {
    let (_node, proxy) = start(&[("--max-connection-rate", "10")])?;
    let mut bystander = Bystander::join(proxy.addr).await?; // 2 of the 10 tokens
    let mut burst = Vec::new();
    for _ in 0..40 {
        burst.push(idle_from(&proxy, loopback(2)).await?);
    }
    // Refused sockets close at once; admitted ones stay open, waiting for
    // a CONNECT within the 10 s connect timeout.
    let mut closed = JoinSet::new();
    for mut socket in burst {
        closed.spawn(async move { socket.expect_closed(AT_ONCE).await.is_ok() });
    }
    let refused = closed.join_all().await.into_iter().filter(|c| *c).count();
    let admitted = 40 - refused;
    ensure!(
        (4..=14).contains(&admitted),
        "{admitted} of a burst of 40 admitted at 10/s (8 tokens were left)"
    );
    ensure!(
        rejects(&proxy, "connection_rate")? == refused as f64,
        "rate refusals counted {} for {refused} closed",
        rejects(&proxy, "connection_rate")?
    );
    bystander.still_served().await?;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = session_from(&proxy, loopback(3)).await?;
    later.ping().await?;
    bystander.still_served().await
}

/// Slowloris: clients dribbling their CONNECT one byte per second are cut
/// at `--connect-timeout` (a deadline for the whole CONNECT, which bytes
/// arriving do not extend), counted as `timeout`, and their slots are free
/// again: while they hold the last two slots a new client is refused,
/// after the deadline it gets in.
#[tokio::test]
async fn slowloris_clients_are_cut_at_the_connect_deadline_and_free_their_slots() -> Result<()> {
    let (_node, proxy) = start(&[("--connect-timeout", "2"), ("--max-connections", "4")])?;
    let mut bystander = Bystander::join(proxy.addr).await?; // 2 of the 4 slots
    let started = Instant::now();
    let mut dribblers = JoinSet::new();
    for _ in 0..2 {
        let mut client = idle_from(&proxy, loopback(2)).await?;
        dribblers.spawn(async move {
            let connect = Connect::new(&unique_id("slowloris")).encode();
            let opened = Instant::now();
            for (sent, byte) in connect.iter().enumerate() {
                client.send(&[*byte]).await?;
                // A close shows up as an error here.
                if client.recv_for(Duration::from_secs(1)).await.is_err() {
                    return Ok::<_, anyhow::Error>((opened.elapsed(), sent + 1));
                }
            }
            bail!("the whole CONNECT was dribbled in without a cut")
        });
    }
    wait_for_sockets(&proxy, 4, TIMEOUT).await?;
    refused_from(&proxy, loopback(3)).await?;
    bystander.still_served().await?;

    for cut in dribblers.join_all().await {
        let (after, bytes) = cut?;
        ensure!(
            after >= Duration::from_millis(1900) && after < Duration::from_millis(3500),
            "a slowloris client was cut after {after:?} (connect timeout 2 s)"
        );
        ensure!(bytes >= 2, "it had sent only {bytes} byte(s)");
    }
    ensure!(rejects(&proxy, "timeout")? == 2.0);
    ensure!(rejects(&proxy, "connections")? == 1.0);
    wait_for_sockets(&proxy, 2, TIMEOUT).await?;
    let mut after = session_from(&proxy, loopback(3)).await?;
    after.ping().await?;
    bystander.still_served().await?;
    ensure!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

/// Idle sockets that never send CONNECT opened in each wave.
const IDLE_SOCKETS: usize = 3000;

/// Resident memory the proxy may add per idle socket it holds, KiB.
/// Measured about 5.8 KiB (debug build; `docs/proxy-limits.md`), 9.5 KiB
/// when every waiting socket had a 4 KiB read buffer; bounded here with
/// room for a loaded machine.
const MAX_KIB_PER_IDLE_SOCKET: u64 = 16;

/// Two waves of thousands of sockets that never send CONNECT: each is held
/// until `--connect-timeout` and then closed (counted as `timeout`), the
/// proxy's resident memory grows by a bounded amount per held socket, the
/// second wave does not grow it beyond the first (nothing is left behind),
/// and the bystander keeps getting its messages.
#[tokio::test]
async fn thousands_of_idle_sockets_are_closed_at_the_deadline_with_bounded_memory() -> Result<()> {
    let (_node, proxy) = start(&[
        ("--connect-timeout", "2"),
        ("--max-connections-per-ip", "100000"),
        ("--max-connection-rate", "100000"),
    ])?;
    let mut bystander = Bystander::join(proxy.addr).await?;
    let before = rss_kib(&proxy)?;
    let mut peaks = Vec::new();
    for wave in 1..=2 {
        let mut sockets = Vec::with_capacity(IDLE_SOCKETS);
        for _ in 0..IDLE_SOCKETS {
            sockets.push((idle_from(&proxy, loopback(2)).await?, Instant::now()));
        }
        wait_for_sockets(&proxy, IDLE_SOCKETS + 2, TIMEOUT).await?;
        peaks.push(rss_kib(&proxy)?);
        bystander.still_served().await?;

        let mut closed = JoinSet::new();
        for (mut socket, opened) in sockets {
            closed.spawn(async move {
                let left =
                    (opened + Duration::from_secs(6)).saturating_duration_since(Instant::now());
                socket.expect_closed(left).await?;
                Ok::<_, anyhow::Error>(opened.elapsed())
            });
        }
        let mut held = Vec::with_capacity(IDLE_SOCKETS);
        for result in closed.join_all().await {
            held.push(
                result.with_context(|| {
                    format!("wave {wave}: an idle socket outlived the deadline")
                })?,
            );
        }
        let shortest = held.iter().min().copied().unwrap_or_default();
        let longest = held.iter().max().copied().unwrap_or_default();
        ensure!(
            shortest >= Duration::from_millis(1900),
            "wave {wave}: an idle socket was closed after only {shortest:?}"
        );
        eprintln!(
            "wave {wave}: {IDLE_SOCKETS} idle sockets held {shortest:?}..{longest:?}; \
             proxy RSS {before} KiB before, {} KiB with them open",
            peaks[wave - 1]
        );
        wait_for_sockets(&proxy, 2, TIMEOUT).await?;
        ensure!(rejects(&proxy, "timeout")? == (wave * IDLE_SOCKETS) as f64);
        bystander.still_served().await?;
    }
    let growth = peaks[0].saturating_sub(before);
    ensure!(
        growth <= MAX_KIB_PER_IDLE_SOCKET * IDLE_SOCKETS as u64,
        "{IDLE_SOCKETS} idle sockets grew the proxy by {growth} KiB"
    );
    ensure!(
        peaks[1] <= peaks[0] + growth / 4 + 1024,
        "the second wave grew the proxy from {} KiB to {} KiB: something is left behind",
        peaks[0],
        peaks[1]
    );
    let after = rss_kib(&proxy)?;
    eprintln!("proxy RSS after both waves: {after} KiB");
    Ok(())
}

/// A client id and a user name of 30,000 characters with a newline and a
/// terminal escape at the start are logged escaped and cut: no forged line,
/// no 30 KB line.
#[tokio::test]
async fn client_ids_and_user_names_are_logged_cut_and_escaped() -> Result<()> {
    let (_node, proxy) = start(&[])?;
    let evil = |what: &str| format!("{what}\nINFO forged {what}\u{1b}[2J{}", "x".repeat(30_000));
    let connect = Connect::new(&evil("id")).with_username(&evil("user"));
    let mut client = RawClient::connect_tcp(proxy.addr).await?;
    client.send(&connect.encode()).await?;
    // The node refuses the 30,000-byte id (CONNACK 0x02); the proxy has
    // routed and logged it by then.
    let ack = client.recv().await?.connack()?;
    ensure!(ack.code == 2, "CONNACK {ack:?}");
    let log = within_for(TIMEOUT, "the routing log line", async {
        loop {
            let log = proxy.log_tail();
            if log.contains("client routed") {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    let routed = log
        .lines()
        .find(|line| line.contains("client routed"))
        .context("no routing line")?;
    for what in ["id", "user"] {
        ensure!(
            routed.contains(&format!("{what}\\nINFO forged {what}\\u{{1b}}[2J")),
            "the {what} is not escaped: {routed}"
        );
    }
    ensure!(routed.contains("…(+"), "no truncation marker: {routed}");
    ensure!(routed.len() < 1000, "a {}-byte log line", routed.len());
    ensure!(
        !log.lines().any(|line| line.starts_with("INFO forged")),
        "a forged line in:\n{log}"
    );
    Ok(())
}

/// Runs the proxy binary with `args` and waits (bounded) for it to exit.
fn run_to_exit(args: &[&str]) -> Result<(Option<i32>, String)> {
    let mut child = Command::new(proxy_binary()?)
        .args(["--listen", "127.0.0.1:0", "--backends", "127.0.0.1:1"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the proxy")?;
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("proxy with {args:?} still running after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Limits of 0 and an out-of-range connect timeout stop the proxy at
/// start-up with exit code 2 and a message naming the setting.
#[tokio::test]
async fn nonsensical_limits_exit_with_code_2() -> Result<()> {
    for (flag, value) in [
        ("--max-connections", "0"),
        ("--max-connections-per-ip", "0"),
        ("--max-connection-rate", "0"),
        ("--connect-timeout", "0"),
        ("--connect-timeout", "86400"),
    ] {
        let (code, stderr) = run_to_exit(&[flag, value])?;
        ensure!(
            code == Some(2),
            "{flag} {value}: exit code {code:?}, stderr {stderr}"
        );
        ensure!(
            stderr.contains("invalid configuration") && stderr.contains(&flag[2..]),
            "{flag} {value}: stderr {stderr}"
        );
    }
    Ok(())
}
