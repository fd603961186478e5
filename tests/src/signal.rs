//! Signals to the processes a test started (SIGTERM for a graceful stop,
//! SIGINT as Ctrl-C does, SIGSTOP/SIGCONT to freeze, SIGHUP to reload):
//! the harness's one `kill(2)` call.

use std::process::Child;

/// Sends `signal` to `child`, which the caller has not waited on yet.
#[allow(unsafe_code)] // a libc call; its SAFETY comment is at the call
pub fn send(child: &Child, signal: libc::c_int) -> std::io::Result<()> {
    let pid =
        libc::pid_t::try_from(child.id()).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
    // own child, which cannot be reaped (and its pid reused) before the
    // caller waits on it, and `&Child` shows it has not.
    match unsafe { libc::kill(pid, signal) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
