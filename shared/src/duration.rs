//! Durations as written in the config: `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1500us"`.
//!
//! A number (integer or decimal) followed by one unit. No unit, an unknown unit, a negative
//! number, a value below one nanosecond's precision (`"0.1ns"`) or a value that does not
//! fit a `Duration` is an error naming the input.

use std::time::Duration;

/// Why a duration's text is refused; each names the text as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {text:?} has no unit (use ms, s, m, h)")]
    NoUnit { text: String },
    #[error("duration {text:?} does not start with a number")]
    NoNumber { text: String },
    #[error("duration {text:?} has unknown unit {unit:?} (use ns, us, ms, s, m, h)")]
    UnknownUnit { text: String, unit: String },
    #[error("duration {text:?} has a malformed number {number:?}")]
    Malformed { text: String, number: String },
    #[error("duration {text:?} is too large")]
    TooLarge { text: String },
    #[error(
        "duration {text:?} is not a whole number of nanoseconds (the smallest step is \"1ns\")"
    )]
    SubNanosecond { text: String },
}

/// Parses `"250ms"` and friends. Units: `ns`, `us`, `ms`, `s`, `m`, `h`. The number is
/// read exactly (no floating point), so a value that is not a whole number of
/// nanoseconds (`"0.1ns"`, `"1.0000000005s"`) is refused rather than rounded, and never
/// silently becomes 0.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let input = || text.to_string();
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError::NoUnit { text: input() })?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(DurationError::NoNumber { text: input() });
    }
    let nanos_per_unit: u128 = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => {
            return Err(DurationError::UnknownUnit {
                text: input(),
                unit: other.to_string(),
            });
        }
    };
    let malformed = || DurationError::Malformed {
        text: input(),
        number: num.to_string(),
    };
    let (whole, fraction) = num.split_once('.').unwrap_or((num, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(malformed());
    }
    let too_large = || DurationError::TooLarge { text: input() };
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    // Trailing zeros of the fraction change nothing. A unit has at most 13 factors of 2
    // or of 5, so a fraction of more digits than that (not ending in 0) can never be a
    // whole number of nanoseconds; 18 digits keep the arithmetic below in u128.
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 18 {
        return Err(DurationError::SubNanosecond { text: input() });
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().map_err(|_| malformed())?;
        let scaled = digits * nanos_per_unit;
        if !scaled.is_multiple_of(scale) {
            return Err(DurationError::SubNanosecond { text: input() });
        }
        scaled / scale
    };
    let nanos = whole
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(fraction_nanos))
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(too_large)?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way the config writes it (for status output and docs).
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".to_string()
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "5",
            "ms",
            "5 parsecs",
            "-1s",
            "1e400s",
            "1..2s",
            "s5",
            ".s",
            "1.2.3s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_duration("0.5us"), Ok(Duration::from_nanos(500)));
        assert_eq!(parse_duration(".25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0.3s"), Ok(Duration::from_millis(300)));
        assert_eq!(
            parse_duration("1.000000001s"),
            Ok(Duration::from_nanos(1_000_000_001))
        );
        assert_eq!(parse_duration("0.5h"), Ok(Duration::from_secs(1800)));
        assert_eq!(
            parse_duration("2.50000000000000000000000000s"),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(parse_duration("0.0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("18446744073709551615ns"),
            Ok(Duration::from_nanos(u64::MAX))
        );
        assert_eq!(
            parse_duration("18446744073709551616ns"),
            Err(DurationError::TooLarge {
                text: "18446744073709551616ns".into()
            })
        );
        assert_eq!(
            parse_duration("99999999999999999999999999999999999999999h"),
            Err(DurationError::TooLarge {
                text: "99999999999999999999999999999999999999999h".into()
            })
        );
    }

    #[test]
    fn sub_nanosecond_values_are_refused_not_rounded() {
        for bad in [
            "0.1ns",
            "1.5ns",
            "0.0001us",
            "1.0000000005s",
            "0.0000000000000000001h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e, DurationError::SubNanosecond { text: bad.into() });
            let e = e.to_string();
            assert!(e.contains("whole number of nanoseconds"), "{bad}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(60),
            Duration::from_micros(7),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
