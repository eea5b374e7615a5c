//! Durations as written in change sets and policies: `30s`, `15m`, `2h`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;

/// A positive whole number of seconds, minutes or hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    secs: u64,
}

impl Duration {
    /// The duration in seconds.
    pub fn as_secs(self) -> u64 {
        self.secs
    }

    /// A duration of `secs` seconds.
    pub fn from_secs(secs: u64) -> Self {
        Duration { secs }
    }

    /// As a `std::time::Duration`.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.secs)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || {
            format!("invalid duration `{s}`: expected a positive number followed by s, m, h or d, like `30s`, `15m`, `2h` or `7d`")
        };
        let unit = s.chars().last().ok_or_else(expected)?;
        let factor = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(expected()),
        };
        let digits = &s[..s.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(expected());
        }
        let n: u64 = digits.parse().map_err(|_| expected())?;
        match n.checked_mul(factor) {
            Some(secs) if secs > 0 => Ok(Duration { secs }),
            _ => Err(expected()),
        }
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.secs {
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]*[1-9][0-9]*[smhd]$",
            "description": "A positive whole number of seconds (s), minutes (m) or hours (h), e.g. `15m`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_s_m_h() {
        assert_eq!("30s".parse::<Duration>().unwrap().as_secs(), 30);
        assert_eq!("15m".parse::<Duration>().unwrap().as_secs(), 900);
        assert_eq!("2h".parse::<Duration>().unwrap().as_secs(), 7200);
        assert_eq!("7d".parse::<Duration>().unwrap().as_secs(), 7 * 86_400);
    }

    #[test]
    fn rejects_zero_unknown_units_and_junk() {
        for bad in [
            "0s",
            "15",
            "m",
            "1w",
            "-1m",
            "1.5h",
            "",
            "99999999999999999999h",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!("120m".parse::<Duration>().unwrap().to_string(), "2h");
        assert_eq!("90s".parse::<Duration>().unwrap().to_string(), "90s");
        assert_eq!("48h".parse::<Duration>().unwrap().to_string(), "2d");
    }
}
