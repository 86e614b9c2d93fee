//! What a process costs, read from /proc: CPU time (user + system, all
//! threads) and resident memory.

use anyhow::{Context, Result};

/// Clock ticks per second for /proc/PID/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// utime + stime in microseconds.
    pub cpu_us: u64,
    pub rss_kib: u64,
}

pub fn sample(pid: &str) -> Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Sample {
        cpu_us: ticks * 1_000_000 / TICKS_PER_SEC,
        rss_kib,
    })
}
