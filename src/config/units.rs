//! Human-friendly durations (`"30s"`, `"5m"`, `"1h30m"`) and sizes (`"64KiB"`).

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` groups, with units
/// `ms`, `s`, `m`, `h` and `d`. A bare `0` is accepted; other bare numbers are not,
/// because a missing unit is almost always a mistake.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number like \"30s\", \"5m\" or \"1h\""
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (ms, s, m, h or d)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it, in its largest exact unit.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_nanos() != 0 {
        return format!("{}ms", duration.as_millis());
    }
    match secs {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses a byte size: a plain integer, or one with a `B`, `KiB`, `MiB` (or `KB`, `MB`) suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size {text:?}: expected a number like \"64KiB\""
        ));
    }
    let value: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let factor = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1024,
        "KB" => 1000,
        "MiB" | "M" => 1024 * 1024,
        "MB" => 1_000_000,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use B, KiB or MiB)"
            ));
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_without_units_or_with_junk_are_refused() {
        for bad in ["", "30", "5 minutes", "m", "-5s", "5y"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_round_trip_through_format() {
        for text in ["30s", "5m", "1h", "90s", "250ms"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
    }
}
