//! Durations as kubectl takes them (Go's `time.ParseDuration`): `60s`, `2m`, `1h`,
//! `1m30s`, `1.5h`, `500ms`; a bare number keeps meaning seconds, as loomctl's
//! `--timeout` always did.

use std::time::Duration;

/// The units, longest name first so that `ms` is not read as `m`.
const UNITS: [(&str, f64); 8] = [
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86400.0),
];

/// The longest duration accepted (a year): anything longer is a typo.
const MAX_SECONDS: f64 = 366.0 * 86400.0;

/// Parses `text` as a duration: a sequence of decimal numbers each with a unit
/// (`ns`, `us`, `ms`, `s`, `m`, `h`, `d`), or a bare non-negative integer of seconds.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a duration: use a number of seconds or a number with a unit, \
             like 60s, 2m, 1h or 1m30s"
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return checked(seconds as f64).ok_or_else(bad);
    }
    let mut rest = text;
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, after) = tail.split_at(unit_len);
        let (_, scale) = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(bad)?;
        seconds += value * scale;
        rest = after;
    }
    checked(seconds).ok_or_else(bad)
}

fn checked(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && (0.0..=MAX_SECONDS).contains(&seconds))
        .then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_durations_and_bare_seconds() {
        let secs = Duration::from_secs;
        for (text, want) in [
            ("60", secs(60)),
            ("0", secs(0)),
            ("60s", secs(60)),
            ("2m", secs(120)),
            ("1h", secs(3600)),
            ("1m30s", secs(90)),
            ("1h2m3s", secs(3723)),
            ("1.5h", secs(5400)),
            ("500ms", Duration::from_millis(500)),
            ("2m500ms", Duration::from_millis(120_500)),
            ("1d", secs(86400)),
            (" 30s ", secs(30)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_accepted() {
        for text in [
            "", "s", "60x", "1.2.3s", "-5s", "-5", "5 s", "1h-", "m5", ".s", "abc", "9999d",
        ] {
            let error = parse(text).expect_err(text);
            assert!(
                error.contains("like 60s, 2m, 1h or 1m30s"),
                "{text}: {error}"
            );
        }
    }
}
