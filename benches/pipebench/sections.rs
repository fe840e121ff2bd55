//! Sections of docs/BENCHMARKS.md that a run of their workload alone can replace: each
//! sits between two markers (HTML comments, invisible once rendered), so that such a
//! run rewrites just it in the existing file, and a run without that workload keeps the
//! one already there (the other sections keep the run they came from).

use crate::harness::Sample;

/// The markers of one section.
pub struct Marked {
    /// The start of the opening marker, enough to find a section written by an older
    /// wording of it.
    pub begin_key: &'static str,
    pub end: &'static str,
}

impl Marked {
    /// The text between the markers of `md`, markers included.
    fn find(&self, md: &str) -> Option<(usize, usize)> {
        let b = md.find(self.begin_key)?;
        let e = md[b..].find(self.end)? + b + self.end.len();
        Some((b, e))
    }

    /// `md` with the section replaced by `sec` (or `sec` put before `## Tuning`, or at
    /// the end).
    fn replace(&self, md: &str, sec: &str) -> String {
        if let Some((b, e)) = self.find(md) {
            return format!("{}{sec}{}", &md[..b], &md[e..]);
        }
        match md.find("\n## Tuning") {
            Some(i) => format!("{}\n{sec}\n{}", &md[..i], &md[i..]),
            None => format!("{md}\n{sec}\n"),
        }
    }

    /// The file to write, given this run's samples (`mine` says which are this
    /// section's), its section `sec`, the report of the whole run (`full`) and the file
    /// already there: a run of this workload alone replaces the section of `existing`;
    /// a run without it keeps `existing`'s section in the new file; any other run
    /// writes `full` as it is.
    pub fn merge(
        &self,
        samples: &[Sample],
        mine: impl Fn(&Sample) -> bool,
        sec: &str,
        full: String,
        existing: Option<&str>,
    ) -> String {
        let any = samples.iter().any(&mine);
        let only = any && samples.iter().all(&mine);
        match existing {
            Some(old) if only => self.replace(old, sec),
            Some(old) if !any => match self.find(old) {
                Some((b, e)) => self.replace(&full, &old[b..e]),
                None => full,
            },
            _ => full,
        }
    }
}
