//! Running `astramq-node user ...` as an operator does, the password on
//! standard input, and password files that clean up after themselves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

use crate::binary::node_binary;
use crate::unique_id;

/// Runs `astramq-node user ARGS...` with `stdin` as its standard input;
/// returns its exit code and standard output, standard error.
pub fn user_command(args: &[&str], stdin: &str) -> Result<(Option<i32>, String, String)> {
    let mut child = Command::new(node_binary()?)
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning astramq-node user")?;
    child
        .stdin
        .take()
        .context("stdin not piped")?
        .write_all(stdin.as_bytes())?;
    // Bounded by the command's own Redis timeout (5 s).
    let output = child.wait_with_output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `user add NAME TARGET...` with `password`; fails unless it succeeds.
/// `target` is `["--password-file", path]` or `["--redis", url]`.
pub fn add_user(target: &[&str], name: &str, password: &str) -> Result<()> {
    let mut args = vec!["add", name];
    args.extend_from_slice(target);
    let (code, out, err) = user_command(&args, &format!("{password}\n"))?;
    ensure!(
        code == Some(0),
        "user add {name} failed ({code:?}): {out}{err}"
    );
    Ok(())
}

/// `user remove NAME TARGET...`; fails unless it succeeds.
pub fn remove_user(target: &[&str], name: &str) -> Result<()> {
    let mut args = vec!["remove", name];
    args.extend_from_slice(target);
    let (code, out, err) = user_command(&args, "")?;
    ensure!(
        code == Some(0),
        "user remove {name} failed ({code:?}): {out}{err}"
    );
    Ok(())
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory.
    pub fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(unique_id(prefix));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
