//! Per-identity issuance limits written as `"<count>/<unit>"` (`"120/min"`).

use std::time::Duration;

/// A token bucket: bursts up to `capacity` issuances, refilled evenly over `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub capacity: u32,
    pub period: Duration,
}

impl RateLimit {
    /// Parses `"<n>/<unit>"` with unit `s|sec|second`, `min|minute` or `h|hour`; `n` > 0.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "invalid rate {spec:?}: expected \"<count>/<unit>\" like \"120/min\" (units: s, min, h)"
            )
        };
        let (count, unit) = spec.trim().split_once('/').ok_or_else(usage)?;
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(usage());
        }
        let capacity: u32 = count
            .parse()
            .map_err(|_| format!("invalid rate {spec:?}: count too large"))?;
        if capacity == 0 {
            return Err(format!(
                "invalid rate {spec:?}: the count must be at least 1"
            ));
        }
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(usage()),
        };
        Ok(Self { capacity, period })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        let cases = [
            ("120/min", 120, 60),
            ("5/s", 5, 1),
            ("5/sec", 5, 1),
            ("5/second", 5, 1),
            ("60/minute", 60, 60),
            ("1000/h", 1000, 3600),
            ("1000/hour", 1000, 3600),
            (" 7 / min ", 7, 60),
        ];
        for (spec, capacity, secs) in cases {
            assert_eq!(
                RateLimit::parse(spec),
                Ok(RateLimit {
                    capacity,
                    period: Duration::from_secs(secs)
                }),
                "{spec}"
            );
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "",
            "120",
            "/min",
            "0/min",
            "-1/min",
            "1.5/min",
            "10/day",
            "10/m",
            "x/min",
            "99999999999/s",
        ] {
            assert!(RateLimit::parse(bad).is_err(), "{bad:?}");
        }
    }
}
