//! Locating (and, once per test process, building) the executables under
//! test: `astramq-node` and `astramq-proxy`.
//!
//! The tests crate does not depend on the binary crates, so `cargo test`
//! alone would not rebuild them. Building here keeps "edit, run the tests" a
//! one-command loop; `ASTRAMQ_SKIP_BUILD=1` turns that off (CI steps that
//! already built them), and `ASTRAMQ_NODE_BIN` / `ASTRAMQ_PROXY_BIN` point
//! at any binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};

/// The node binary, building the workspace binaries on the first call.
pub fn node_binary() -> Result<PathBuf> {
    binary("ASTRAMQ_NODE_BIN", "astramq-node")
}

/// The proxy binary, building the workspace binaries on the first call.
pub fn proxy_binary() -> Result<PathBuf> {
    binary("ASTRAMQ_PROXY_BIN", "astramq-proxy")
}

fn binary(override_var: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(override_var) {
        return Ok(PathBuf::from(path));
    }
    let path = binaries_dir()?.join(name);
    if !path.exists() {
        return Err(anyhow!("{name} not found at {}", path.display()));
    }
    Ok(path)
}

/// The directory holding this test build's profile of the workspace
/// binaries, built once per test process (tests in one file run as threads
/// of one process, so parallel tests wait for one build, not many).
pub fn binaries_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_or_build() -> Result<PathBuf> {
    let dir = profile_dir()?;
    if std::env::var("ASTRAMQ_SKIP_BUILD").as_deref() != Ok("1") {
        build(&dir)?;
    }
    Ok(dir)
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The target profile directory (`target/debug`) this test binary runs from.
///
/// Test executables live in `<target>/<profile>/deps/` and this crate's own
/// binaries (`chaos`) in `<target>/<profile>/`, so walking up from the
/// running executable finds the right directory even when the target dir
/// was moved with `CARGO_TARGET_DIR` or the run used `--release`.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        return dir
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()));
    }
    Ok(dir.to_path_buf())
}

/// Runs `cargo build -q -p astramq-node -p astramq-proxy` in the workspace.
fn build(profile_dir: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .args(["build", "-q", "-p", "astramq-node", "-p", "astramq-proxy"])
        .current_dir(workspace_root());
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        command.arg("--release");
    }
    let output = command
        .output()
        .context("running cargo build for the binaries")?;
    if !output.status.success() {
        return Err(anyhow!(
            "cargo build of the binaries failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
