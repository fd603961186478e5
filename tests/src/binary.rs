//! Locating (and, once per test process, building) the node executable.
//!
//! The tests crate does not depend on the node crate, so `cargo test` alone
//! would not rebuild the broker. Building it here keeps "edit the node, run
//! the tests" a one-command loop; `ASTRAMQ_SKIP_BUILD=1` turns that off (CI
//! steps that already built it) and `ASTRAMQ_NODE_BIN` points at any binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};

/// Name of the executable built by the `astramq-node` package.
const NODE_BIN_NAME: &str = "astramq-node";

/// Returns the path of the node binary, building it on the first call.
///
/// The result is cached for the whole test process (tests in one file run as
/// threads of one process), so parallel tests wait for one build, not many.
pub fn node_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Resolves the binary path from the environment or by running cargo.
fn locate_or_build() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ASTRAMQ_NODE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let profile_dir = profile_dir()?;
    if std::env::var("ASTRAMQ_SKIP_BUILD").as_deref() != Ok("1") {
        build(&profile_dir)?;
    }
    let path = profile_dir.join(NODE_BIN_NAME);
    if !path.exists() {
        return Err(anyhow!("node binary not found at {}", path.display()));
    }
    Ok(path)
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The target profile directory (`target/debug`) this test binary runs from.
///
/// Test executables live in `<target>/<profile>/deps/`, so walking up from
/// the running executable finds the right directory even when the target
/// dir was moved with `CARGO_TARGET_DIR` or the run used `--release`.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))
}

/// Runs `cargo build -q -p astramq-node` in the workspace root.
fn build(profile_dir: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .args(["build", "-q", "-p", "astramq-node"])
        .current_dir(workspace_root());
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        command.arg("--release");
    }
    let output = command
        .output()
        .context("running cargo build for the node")?;
    if !output.status.success() {
        return Err(anyhow!(
            "cargo build -p astramq-node failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
