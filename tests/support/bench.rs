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
