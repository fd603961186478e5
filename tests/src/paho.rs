//! The independent Python client: paho-mqtt (MQTT 3.1.1 and 5.0) run by
//! Debian's `python3`, where the `python3-paho-mqtt` package installs it.
//! Tests run short scripts with it (`python3 -c SCRIPT args...`).

use std::path::Path;
use std::process::Command;

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
