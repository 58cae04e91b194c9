//! Statistics and machine facts for `resurgam bench`: percentiles, median [min–max] over
//! repeats, the machine description, and readers of `/proc` (PSS, CPU ticks, load).

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The `q` quantile (0..=1) of an ascending slice by the nearest-rank method; NaN if empty.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `(p50, p99)` of unsorted samples.
pub(crate) fn p50_p99(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

/// A duration in microseconds.
pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median and range of the per-repeat figures of one metric.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// Summarises `samples` (NaN figures are ignored); `None` if none is left.
    pub(crate) fn of(samples: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// A number with about three significant digits, for tables.
pub(crate) fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if x.is_nan() {
        "-".to_string()
    } else if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// What the benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub mem_total_kib: Option<u64>,
    pub kernel: Option<String>,
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
}

impl Machine {
    pub(crate) fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_kib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_total_kib,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            loadavg_start: loadavg(),
            loadavg_end: None,
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `(state, ppid, starttime)` from `/proc/<pid>/stat`, or None if there is no such process.
pub(crate) fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let fields = stat_fields(pid)?;
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: i32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // Fields 14 and 15 of stat(5); index 0 here is field 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 if unknown.
pub(crate) fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions, touches no memory of ours and is thread-safe.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(100)
}

/// `(Pss, Rss)` in KiB from `/proc/<pid>/smaps_rollup`.
pub(crate) fn pss_rss_kib(pid: i32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((kib_field(&text, "Pss:")?, kib_field(&text, "Rss:")?))
}

/// The number after `name` on the line starting with it (`Name:   123 kB`).
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// `(VmHWM, VmRSS)` of a process in KiB (`/proc/<pid>/status`): its peak resident
/// memory since it started, and its resident memory now.
pub(crate) fn hwm_rss_kib(pid: i32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((kib_field(&text, "VmHWM:")?, kib_field(&text, "VmRSS:")?))
}

/// Microseconds since the Unix epoch.
pub(crate) fn unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Parses a UTC RFC 3339 timestamp as `tracing-subscriber` writes it
/// (`2026-11-25T22:31:06.233333Z`) into microseconds since the Unix epoch.
pub(crate) fn parse_rfc3339_utc_micros(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Fraction: the first six digits are microseconds.
    let digits: String = frac.chars().take(6).collect();
    let scale = 10i64.pow(6 - digits.len() as u32);
    let us = digits.parse::<i64>().ok()? * scale;
    let days = days_from_civil(y, m, day);
    Some(((days * 24 + hh) * 60 + mm) * 60_000_000 + ss * 1_000_000 + us)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_summaries() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
        let s = Summary::of(&[3.0, 1.0, f64::NAN, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn timestamps_parse_to_unix_micros() {
        assert_eq!(
            parse_rfc3339_utc_micros("1970-01-01T00:00:00.000001Z"),
            Some(1)
        );
        assert_eq!(
            parse_rfc3339_utc_micros("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000)
        );
        assert_eq!(parse_rfc3339_utc_micros("2000-03-01T00:00:01+01:00"), None);
        let now = SystemTime::now();
        assert!(unix_micros(now) > 1_600_000_000_000_000);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        assert!(cpu_ticks(me).is_some());
        assert!(proc_stat(me).is_some());
        assert!(clk_tck() > 0);
    }
}
