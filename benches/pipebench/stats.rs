//! Medians and spreads of the samples, and how a number is written in the report. A
//! metric that has no successful sample is `Missing` with the first error, never zero.

use crate::harness::Sample;
use std::fmt::Write as _;

/// Median and spread of one metric of one system in one workload.
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub enum Cell {
    Value(Stat),
    /// Never ran or every round failed: the first error.
    Missing(String),
}

pub fn stat(samples: &[Sample], workload: &str, system: &str, metric: &str) -> Cell {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.workload == workload && s.system == system)
        .collect();
    let mut v: Vec<f64> = mine
        .iter()
        .filter(|s| s.error.is_none())
        .filter_map(|s| s.metrics.get(metric).copied())
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        let why = mine
            .iter()
            .find_map(|s| s.error.clone())
            .unwrap_or_else(|| "not measured".into());
        return Cell::Missing(why);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Cell::Value(Stat {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

pub fn med(samples: &[Sample], w: &str, sys: &str, m: &str) -> Option<f64> {
    match stat(samples, w, sys, m) {
        Cell::Value(s) => Some(s.median),
        Cell::Missing(_) => None,
    }
}

pub fn fmt_num(x: f64, decimals: usize) -> String {
    if decimals == 0 {
        let s = format!("{:.0}", x);
        // thousands separators
        let neg = s.starts_with('-');
        let digits: Vec<char> = s.trim_start_matches('-').chars().collect();
        let mut out = String::new();
        for (i, c) in digits.iter().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(*c);
        }
        if neg {
            format!("-{out}")
        } else {
            out
        }
    } else {
        format!("{x:.decimals$}")
    }
}

pub fn short(e: &str) -> String {
    let e = e.replace('|', "/").replace('\n', " ");
    if e.chars().count() > 300 {
        format!("{}…", e.chars().take(300).collect::<String>())
    } else {
        e
    }
}

/// A table cell: median with the spread, or why there is none.
pub fn cell(samples: &[Sample], w: &str, sys: &str, m: &str, decimals: usize) -> String {
    match stat(samples, w, sys, m) {
        Cell::Value(s) if s.n > 1 => format!(
            "{} ({}–{})",
            fmt_num(s.median, decimals),
            fmt_num(s.min, decimals),
            fmt_num(s.max, decimals)
        ),
        Cell::Value(s) => fmt_num(s.median, decimals),
        Cell::Missing(_) => "n/a".into(),
    }
}

/// Under a table: why each system that has no numbers in it has none.
pub fn missing_notes(o: &mut String, samples: &[Sample], w: &str, systems: &[String], m: &str) {
    for sys in systems {
        if let Cell::Missing(why) = stat(samples, w, sys, m) {
            let _ = writeln!(o, "\n*n/a — {sys}: {}*", short(&why));
        }
    }
}

pub fn systems_in(samples: &[Sample], w: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in samples.iter().filter(|s| s.workload == w) {
        if !out.contains(&s.system) {
            out.push(s.system.clone());
        }
    }
    out
}

/// A sample's raw result for the "every sample" tables: its metrics, or its error.
pub fn sample_result(x: &Sample) -> String {
    match &x.error {
        Some(e) => format!("error: {}", short(e)),
        None => x
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={v:.3}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// One line of `sys`'s notes on workload `w`, each named by its round, when it has any.
pub fn notes_line(o: &mut String, samples: &[Sample], w: &str, sys: &str) {
    let notes: Vec<String> = samples
        .iter()
        .filter(|x| x.workload == w && x.system == sys)
        .flat_map(|x| {
            x.notes
                .iter()
                .map(|n| format!("round {}: {n}", x.round + 1))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(o, "\n*{sys}: {}*", short(&notes.join("; ")));
    }
}

/// Every sample `keep` accepts, folded away under "every `what` sample": round,
/// system, how busy the rest of the machine was, and the result.
pub fn raw_samples(o: &mut String, samples: &[Sample], what: &str, keep: impl Fn(&Sample) -> bool) {
    let _ = writeln!(
        o,
        "\n<details><summary>every {what} sample</summary>\n\n\
         | round | system | other work, cores | result |\n| --- | --- | --- | --- |"
    );
    for x in samples.iter().filter(|x| keep(x)) {
        let busy = x.busy_elsewhere.map_or("—".into(), |c| format!("{c:.2}"));
        let _ = writeln!(
            o,
            "| {} | {} | {busy} | {} |",
            x.round + 1,
            x.system,
            sample_result(x)
        );
    }
    let _ = writeln!(o, "\n</details>");
}
