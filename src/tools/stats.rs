//! Figures the load tools share: latency percentiles, and a server process's memory read from
//! `/proc` (same machine only; `None` where it cannot be read).

use serde::Serialize;

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Nearest-rank percentiles of `ms`; all zero when it is empty.
pub fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// Peak resident set size of a process (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

/// Resident set size of a process now (VmRSS), in MiB.
pub fn resident_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

/// A memory figure of `/proc/<pid>/status` (given in kB there), in MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).rev().collect());
        assert_eq!((p.p50, p.p95, p.p99), (51.0, 95.0, 99.0));
        let none = percentiles(Vec::new());
        assert_eq!((none.p50, none.p95, none.p99), (0.0, 0.0, 0.0));
    }

    #[test]
    fn this_process_has_resident_memory() {
        let pid = std::process::id();
        let (now, peak) = (resident_mib(pid).unwrap(), peak_rss_mib(pid).unwrap());
        assert!(now > 0.0 && peak >= now, "{now} {peak}");
    }
}
