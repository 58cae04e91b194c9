//! Metrics: counters and histograms kept as plain numbers where they happen (the core,
//! the loop) and written out in the Prometheus text exposition format (version 0.0.4)
//! when asked (`metrics` op, `resurgam metrics`, `GET /metrics`).
//!
//! Cost: counting is an addition, a histogram observation a search over at most 20
//! bucket bounds; nothing on the call path locks, allocates or formats. Only the fsync
//! thread's latencies cross a thread, through [`AtomicHistogram`] (relaxed atomics).
//! Labels have bounded values: actor names, error kind names, restart causes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (in seconds) of the call latency histogram's buckets.
pub const CALL_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds (in seconds) of the recovery time histogram (a worker's death to its
/// successor serving).
pub const RECOVERY_SECONDS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
];
/// Upper bounds (in seconds) of the checkpoint duration histogram.
pub const CHECKPOINT_SECONDS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];
/// Upper bounds (in seconds) of the call log's fsync latency histogram.
pub const FSYNC_SECONDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram with fixed bucket bounds (seconds), counting in nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Bucket upper bounds in nanoseconds (the same as `bounds`).
    bounds_ns: Vec<u64>,
    /// Observations per bucket (not cumulative); the last one is +Inf.
    counts: Vec<u64>,
    sum_ns: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            counts: vec![0; bounds.len() + 1],
            sum_ns: 0,
        }
    }

    pub fn observe(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A histogram updated from another thread than the one that writes it out.
pub struct AtomicHistogram {
    bounds: &'static [f64],
    bounds_ns: Vec<u64>,
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A copy to write out.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: self.bounds,
            bounds_ns: self.bounds_ns.clone(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A counter per label value (an error kind, a restart cause): a short list searched
/// linearly, so adding a label value needs no table of them here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(Vec<(&'static str, u64)>);

impl Counts {
    pub fn add(&mut self, label: &'static str, n: u64) {
        match self.0.iter_mut().find(|(l, _)| *l == label) {
            Some((_, c)) => *c += n,
            None => self.0.push((label, n)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().copied()
    }
}

/// The kind of a metric family (its `# TYPE`).
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Writes metric families in the text exposition format. Each family is written whole
/// (its HELP and TYPE once, then every sample), as the format requires.
pub struct Exposition {
    out: String,
}

impl Default for Exposition {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition {
            out: String::with_capacity(16 * 1024),
        }
    }

    /// Starts a family: `name` (with `_total` for a counter), its help and kind.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// The samples of one histogram (`_bucket` per bound and +Inf, `_sum`, `_count`).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        let mut bucket = String::new();
        for (i, n) in h.counts.iter().enumerate() {
            cumulative += n;
            bucket.clear();
            match h.bounds.get(i) {
                Some(b) => write_value(&mut bucket, *b),
                None => bucket.push_str("+Inf"),
            }
            self.out.push_str(name);
            self.out.push_str("_bucket");
            write_labels(&mut self.out, labels, Some(&bucket));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.out.push_str(name);
        self.out.push_str("_sum");
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, h.sum_ns as f64 / 1e9);
        self.out.push('\n');
        self.out.push_str(name);
        self.out.push_str("_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {cumulative}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// A sample value: integers without a fraction, others as Rust prints them (which the
/// format's Go float parser reads), never NaN or inf here.
fn write_value(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The process's resident set size in bytes, from `/proc/self/statm` (None when it
/// cannot be read).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(1000)); // on the bound: le="0.001"
        h.observe(Duration::from_micros(1001));
        h.observe(Duration::from_secs(3));
        assert_eq!(h.counts, vec![1, 1, 1]);
        let mut e = Exposition::new();
        e.family("x_seconds", Kind::Histogram, "help");
        e.histogram("x_seconds", &[("actor", "a\"b")], &h);
        let text = e.finish();
        assert!(
            text.contains("x_seconds_bucket{actor=\"a\\\"b\",le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{actor=\"a\\\"b\",le=\"0.01\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{actor=\"a\\\"b\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("x_seconds_count{actor=\"a\\\"b\"} 3\n"));
        assert!(
            text.contains("x_seconds_sum{actor=\"a\\\"b\"} 3.002001\n"),
            "{text}"
        );
    }

    #[test]
    fn counts_keep_one_entry_per_label() {
        let mut c = Counts::default();
        c.add("ok", 1);
        c.add("ActorError", 2);
        c.add("ok", 3);
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            vec![("ok", 4), ("ActorError", 2)]
        );
    }

    #[test]
    fn the_resident_set_is_read_from_proc() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
