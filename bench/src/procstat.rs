//! Broker resource usage from `/proc`: CPU time (`utime + stime` of
//! `/proc/PID/stat`, all threads) and resident memory (`VmRSS` of
//! `/proc/PID/status`), sampled before and after a timed window.
//!
//! CPU time is what makes figures comparable on a shared 2-core machine:
//! throughput depends on what else runs, CPU-µs per delivered message much less.
//! The kernel counts it in clock ticks (usually 10 ms), so windows should be
//! seconds long.

use anyhow::{Context, Result};
use serde::Serialize;

/// One process's counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// `utime + stime`, in seconds.
    pub cpu_s: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

/// Samples one process.
pub fn sample(pid: u32) -> Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (is the broker running?)"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(Sample {
        cpu_s: cpu_seconds(&stat)?,
        rss_kib: rss_kib(&status)?,
    })
}

/// Samples this process (the bench itself).
pub fn sample_self() -> Result<Sample> {
    sample(std::process::id())
}

/// `utime + stime` from the text of `/proc/PID/stat`, in seconds.
fn cpu_seconds(stat: &str) -> Result<f64> {
    // The command name (field 2) is in parentheses and may contain spaces:
    // count fields from the last ')'. Field 3 (state) is then index 0, so
    // utime (field 14) is index 11 and stime (field 15) index 12.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short /proc stat")?
            .parse::<u64>()
            .context("bad /proc stat field")
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks_per_second())
}

fn rss_kib(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS (zombie?)")?;
    line.split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()
        .context("bad VmRSS")
}

#[allow(unsafe_code)] // a libc call; its SAFETY comment is at the call
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The watched processes' usage over a window, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub pids: Vec<u32>,
    /// CPU seconds used by all watched processes during the window.
    pub cpu_s: f64,
    /// `cpu_s` as a percentage of one core.
    pub cpu_percent: f64,
    /// Summed RSS at the start and end of the window, KiB.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

/// Sums a set of processes.
#[derive(Debug, Clone)]
pub struct Watch {
    pids: Vec<u32>,
}

impl Watch {
    pub fn new(pids: Vec<u32>) -> Self {
        Watch { pids }
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// The sum over all watched processes.
    pub fn sample(&self) -> Result<Sample> {
        let mut total = Sample::default();
        for &pid in &self.pids {
            let s = sample(pid)?;
            total.cpu_s += s.cpu_s;
            total.rss_kib += s.rss_kib;
        }
        Ok(total)
    }

    pub fn usage(&self, before: Sample, after: Sample, window_s: f64) -> Usage {
        let cpu_s = (after.cpu_s - before.cpu_s).max(0.0);
        Usage {
            pids: self.pids.clone(),
            cpu_s,
            cpu_percent: 100.0 * cpu_s / window_s.max(1e-9),
            rss_before_kib: before.rss_kib,
            rss_after_kib: after.rss_kib,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_command_name() {
        let stat = "42 (my broker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        let expected = 300.0 / clock_ticks_per_second();
        assert!((cpu_seconds(stat).unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(rss_kib(status).unwrap(), 5120);
    }

    #[test]
    fn samples_this_process() {
        let s = sample_self().unwrap();
        assert!(s.rss_kib > 0);
    }
}
