//! Durations as written in flows: `500ms`, `30s`, `5m`, `1h30m`, `2d`, or a number of seconds.

use std::time::Duration;

use crate::model::DurationSpec;

/// Longest duration a flow may name (400 days), so arithmetic on it cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(400 * 24 * 3600);

/// Parses a duration spec; the error says what was wrong.
pub fn parse_duration(spec: &DurationSpec) -> Result<Duration, String> {
    match spec {
        DurationSpec::Seconds(s) => {
            if !s.is_finite() || *s < 0.0 {
                return Err(format!("{s} is not a valid number of seconds"));
            }
            let d = Duration::from_secs_f64(s.min(MAX_DURATION.as_secs_f64() + 1.0));
            check_max(d)
        }
        DurationSpec::Text(t) => parse_duration_str(t),
    }
}

/// Parses text such as `1h30m` or `250ms`.
pub fn parse_duration_str(t: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "'{t}' is not a duration: use a number with a unit, like 500ms, 30s, 5m, 1h30m or 2d"
        )
    };
    let s = t.trim();
    if s.is_empty() || s.len() > 64 {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * factor;
    }
    if !total.is_finite() || total > MAX_DURATION.as_secs_f64() {
        return Err(format!("'{t}' is longer than the maximum of 400 days"));
    }
    Ok(Duration::from_secs_f64(total))
}

fn check_max(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        Err("duration is longer than the maximum of 400 days".into())
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<u64>) {
        let got = parse_duration_str(input).ok().map(|d| d.as_millis() as u64);
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn durations() {
        check("500ms", Some(500));
        check("1s", Some(1000));
        check("1.5s", Some(1500));
        check("5m", Some(300_000));
        check("1h30m", Some(5_400_000));
        check("2d", Some(172_800_000));
        check(" 10s ", Some(10_000));
        check("", None);
        check("10", None);
        check("s", None);
        check("10x", None);
        check("-1s", None);
        check("1..2s", None);
        check("401d", None);
        check("99999999999999999999d", None);
        assert!(parse_duration(&DurationSpec::Seconds(-1.0)).is_err());
        assert!(parse_duration(&DurationSpec::Seconds(f64::NAN)).is_err());
        assert_eq!(
            parse_duration(&DurationSpec::Seconds(2.5)),
            Ok(Duration::from_millis(2500))
        );
    }
}
