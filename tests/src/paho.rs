//! The independent Python client: paho-mqtt (MQTT 3.1.1 and 5.0) run by
//! Debian's `python3`, where the `python3-paho-mqtt` package installs it.
//! Tests run short scripts with it (`python3 -c SCRIPT args...`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

/// Debian's python3, where python3-paho-mqtt lives.
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Makes sure paho-mqtt is importable by [`DEBIAN_PYTHON`], installing it
/// with scripts/ensure-deps.sh when it is not (a missing client fails the
/// test rather than skipping it).
pub fn ensure_paho() -> Result<()> {
    let importable = || {
        Command::new(DEBIAN_PYTHON)
            .args(["-c", "import paho.mqtt.client"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if importable() {
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new("bash")
        .args(["-c", "source scripts/ensure-deps.sh && ensure_python3_paho"])
        .current_dir(root)
        .status()
        .context("running scripts/ensure-deps.sh")?;
    ensure!(
        status.success() && importable(),
        "cannot install python3-paho-mqtt"
    );
    Ok(())
}

/// Runs `script` (`python3 -c`) with `args` within `limit`; it must exit
/// with success and print exactly `expected` (surrounding space aside).
pub async fn run_script(
    script: &str,
    args: &[&str],
    limit: Duration,
    expected: &str,
) -> Result<()> {
    let run = tokio::process::Command::new(DEBIAN_PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = crate::within_for(limit, "the paho-mqtt script", run).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout.trim() == expected,
        "paho-mqtt: {} {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
