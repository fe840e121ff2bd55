//! The process's own resource use for `/metrics`, read from `/proc/self` (Linux; the
//! series are left out where `/proc` is missing), under the names Prometheus client
//! libraries use, so existing dashboards and alerts apply.

use std::fmt::Write;

/// Kernel clock ticks per second in `/proc/self/stat`: USER_HZ, fixed at 100 by the
/// Linux ABI on every architecture we build for.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// RSS, open descriptors and CPU seconds as Prometheus text, as far as they can be
/// read. Written by hand: the exporter's counters hold integers, CPU seconds are not.
pub fn render() -> String {
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    if let Some(rss) = rss_bytes() {
        series(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            rss as f64,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        series(
            "process_open_fds",
            "gauge",
            "Open file descriptors of the process.",
            dir.count() as f64,
        );
    }
    if let Some(cpu) = cpu_seconds() {
        series(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time the process has used.",
            cpu,
        );
    }
    out
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// utime + stime from `/proc/self/stat` (fields 14 and 15, after the `(comm)`).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_usage_reads_as_plausible_numbers() {
        let rss = rss_bytes().expect("VmRSS");
        assert!(rss > 1 << 20 && rss < 1 << 34, "{rss}");
        let cpu = cpu_seconds().expect("cpu");
        assert!((0.0..1e6).contains(&cpu), "{cpu}");
        let text = render();
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nprocess_open_fds "), "{text}");
    }
}
