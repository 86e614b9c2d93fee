//! What a process costs, read from /proc: CPU time (all threads) and
//! resident memory.
//!
//! CPU time comes from each thread's `schedstat` (nanoseconds on the CPU,
//! as the scheduler counts them) where the kernel has it, so that runs of a
//! tenth of a second still give exact figures; `stat`'s utime + stime are
//! in clock ticks (10 ms), the fallback.

use anyhow::{Context, Result};
use std::collections::HashMap;

/// Clock ticks per second for /proc/PID/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

#[derive(Debug, Clone)]
pub struct Sample {
    /// utime + stime in microseconds (clock-tick resolution).
    pub cpu_us: u64,
    /// Nanoseconds on the CPU of each live thread, by thread id.
    threads: Option<HashMap<u64, u64>>,
    pub rss_kib: u64,
}

impl Sample {
    /// CPU µs used between `before` and `self`: per thread from `schedstat`
    /// when both samples have it (threads that ended in between lose what
    /// they ran since `before`: the runtimes' idle threads end idle), from
    /// clock ticks otherwise.
    pub fn cpu_us_since(&self, before: &Sample) -> u64 {
        match (&self.threads, &before.threads) {
            (Some(now), Some(then)) => {
                let ns: u64 = now
                    .iter()
                    .map(|(tid, ns)| ns.saturating_sub(then.get(tid).copied().unwrap_or(0)))
                    .sum();
                ns / 1000
            }
            _ => self.cpu_us.saturating_sub(before.cpu_us),
        }
    }
}

fn threads(pid: &str) -> Option<HashMap<u64, u64>> {
    let mut out = HashMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let t = t.ok()?;
        let Ok(tid) = t.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        out.insert(tid, s.split_whitespace().next()?.parse().ok()?);
    }
    Some(out)
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
        threads: threads(pid),
        rss_kib,
    })
}
