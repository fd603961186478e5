//! Interoperability smoke test with the Eclipse Mosquitto command-line
//! clients, a second independent MQTT implementation besides `rumqttc`.

use std::path::Path;
use std::process::Stdio;

use anyhow::{anyhow, ensure, Context, Result};
use astramq_tests::{unique_id, within, within_for, NodeProcess, TIMEOUT};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

/// Messages sent; `mosquitto_sub -C` exits after receiving this many.
const COUNT: usize = 3;

/// Prefix that tells message lines from `mosquitto_sub -d` debug lines.
const PAYLOAD_PREFIX: &str = "smoke-message-";

/// Whether an executable called `name` is on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| Path::new(&dir).join(name).is_file())
    })
}

/// Reads lines until one contains `needle`.
async fn wait_for_line(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) -> Result<()> {
    while let Some(line) = lines.next_line().await? {
        if line.contains(needle) {
            return Ok(());
        }
    }
    Err(anyhow!("mosquitto_sub exited before printing {needle:?}"))
}

/// Publishes one message with `mosquitto_pub` at QoS 1.
async fn mosquitto_pub(port: &str, topic: &str, message: &str) -> Result<()> {
    let output = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            message,
        ])
        .kill_on_drop(true)
        .output();
    let output = within("mosquitto_pub", output).await??;
    ensure!(
        output.status.success(),
        "mosquitto_pub failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `mosquitto_sub -t t/# -C 3 -q 1` receives three `mosquitto_pub -q 1` messages.
#[tokio::test]
async fn mosquitto_clients_exchange_messages() -> Result<()> {
    // A missing tool fails the test rather than skipping it: a skipped
    // interoperability test passes without testing anything. `scripts/test`
    // installs the clients.
    let missing: Vec<&str> = ["mosquitto_pub", "mosquitto_sub", "stdbuf"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    ensure!(
        missing.is_empty(),
        "{missing:?} not on PATH: install mosquitto-clients (and coreutils for stdbuf), or run scripts/test, which does"
    );
    let node = NodeProcess::start()?;
    let port = node.port().to_string();
    let count = COUNT.to_string();
    let id = unique_id("mosquitto-sub");
    // stdbuf (coreutils) line-buffers mosquitto_sub's stdout: piped, it would
    // otherwise hold the SUBACK line back until exit.
    let mut sub = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            &id,
            "-t",
            "t/#",
            "-C",
            &count,
            "-q",
            "1",
            "-d",
            "-W",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning mosquitto_sub")?;
    let stdout = sub
        .stdout
        .take()
        .context("mosquitto_sub stdout not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    // With -d, mosquitto_sub reports the SUBACK: from then on publishes reach it.
    within(
        "mosquitto_sub to be subscribed",
        wait_for_line(&mut lines, "SUBACK"),
    )
    .await??;

    for i in 0..COUNT {
        mosquitto_pub(&port, &format!("t/{i}"), &format!("{PAYLOAD_PREFIX}{i}")).await?;
    }
    let mut received = Vec::new();
    within("mosquitto_sub to print the messages", async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with(PAYLOAD_PREFIX) {
                received.push(line);
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    let expected: Vec<_> = (0..COUNT).map(|i| format!("{PAYLOAD_PREFIX}{i}")).collect();
    ensure!(received == expected, "mosquitto_sub printed {received:?}");
    let status = within_for(TIMEOUT, "mosquitto_sub to exit", sub.wait()).await??;
    ensure!(status.success(), "mosquitto_sub exited with {status}");
    Ok(())
}
