//! Figures for the benches that share this harness: quantiles and rates.

use super::*;

/// The `p` quantile (0–1) of sorted durations (zero when there are none).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A benchmark line: `label in 1.23 s: 456 pushes/s`.
pub fn print_rate(label: &str, n: usize, took: Duration) {
    println!(
        "  {label} in {:.2} s: {:.0} pushes/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

/// A benchmark line: `label p50 … p99 …` of sorted durations.
pub fn print_spread(label: &str, sorted: &[Duration], note: &str) {
    println!(
        "  {label} p50 {} p99 {}{note}",
        ms(pct(sorted, 0.5)),
        ms(pct(sorted, 0.99))
    );
}

/// CPU seconds (user + system) a process has used so far, from `/proc`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}
