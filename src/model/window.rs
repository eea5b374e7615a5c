//! Execution windows: `mon-thu 09:00-17:00 UTC`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// When steps may be claimed: a set of weekdays and a time range in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    text: String,
    /// Bit `d` set when weekday `d` (0 = Monday) is in the window.
    days: u8,
    /// Minutes after midnight UTC. When `end <= start` the window crosses
    /// midnight: it opens at `start` on each listed day and closes at `end`
    /// the next day.
    start: u16,
    end: u16,
}

impl Window {
    /// Is the instant given as (weekday from Monday = 0, minute of the UTC day) inside?
    pub fn contains(&self, weekday: u8, minute_of_day: u16) -> bool {
        let listed = |d: u8| d < 7 && self.days & (1 << d) != 0;
        if self.start < self.end {
            listed(weekday) && (self.start..self.end).contains(&minute_of_day)
        } else {
            // `mon-thu 22:00-02:00`: Monday 22:00 to Tuesday 02:00, and so on.
            let yesterday = (weekday + 6) % 7;
            (listed(weekday) && minute_of_day >= self.start)
                || (listed(yesterday) && minute_of_day < self.end)
        }
    }
}

fn parse_day(s: &str) -> Option<u8> {
    DAYS.iter().position(|d| *d == s).map(|p| p as u8)
}

fn parse_minute(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

impl FromStr for Window {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = |why: &str| {
            format!("invalid window `{s}`: {why}; expected `DAYS HH:MM-HH:MM UTC`, like `mon-thu 09:00-17:00 UTC`")
        };
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [days_text, times, zone] = parts[..] else {
            return Err(expected("it needs three parts"));
        };
        if zone != "UTC" {
            return Err(expected("only UTC is supported"));
        }
        let mut days = 0u8;
        for item in days_text.split(',') {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let (Some(a), Some(b)) = (parse_day(a), parse_day(b)) else {
                return Err(expected(&format!("unknown day in `{item}` (use mon..sun)")));
            };
            if a > b {
                return Err(expected(&format!("day range `{item}` runs backwards")));
            }
            (a..=b).for_each(|d| days |= 1 << d);
        }
        let (start, end) = times
            .split_once('-')
            .and_then(|(a, b)| Some((parse_minute(a)?, parse_minute(b)?)))
            .ok_or_else(|| expected("times must be HH:MM-HH:MM"))?;
        if start == end {
            return Err(expected(
                "the start and the end are the same (use 00:00-24:00 for a whole day)",
            ));
        }
        Ok(Window {
            text: s.to_string(),
            days,
            start,
            end,
        })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Window {
    fn schema_name() -> Cow<'static, str> {
        "Window".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(mon|tue|wed|thu|fri|sat|sun)(-(mon|tue|wed|thu|fri|sat|sun))?(,(mon|tue|wed|thu|fri|sat|sun)(-(mon|tue|wed|thu|fri|sat|sun))?)* [0-2][0-9]:[0-5][0-9]-[0-2][0-9]:[0-5][0-9] UTC$",
            "description": "Weekdays and a UTC time range, e.g. `mon-thu 09:00-17:00 UTC`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn office_hours() {
        let w: Window = "mon-thu 09:00-17:00 UTC".parse().unwrap();
        assert!(w.contains(0, 9 * 60));
        assert!(w.contains(3, 17 * 60 - 1));
        assert!(!w.contains(3, 17 * 60), "the end is exclusive");
        assert!(!w.contains(4, 12 * 60), "friday is outside");
    }

    #[test]
    fn a_window_may_cross_midnight_into_the_next_day() {
        let w: Window = "mon-thu 22:00-02:00 UTC".parse().unwrap();
        assert!(w.contains(0, 22 * 60), "monday 22:00");
        assert!(w.contains(1, 60), "tuesday 01:00, from monday night");
        assert!(w.contains(4, 60), "friday 01:00, from thursday night");
        assert!(
            !w.contains(0, 60),
            "monday 01:00: sunday night is not listed"
        );
        assert!(!w.contains(4, 22 * 60), "friday 22:00 is not listed");
        assert!(!w.contains(2, 12 * 60), "midday is outside");
    }

    #[test]
    fn lists_and_whole_days() {
        let w: Window = "sat,sun 00:00-24:00 UTC".parse().unwrap();
        assert!(w.contains(5, 0) && w.contains(6, 1439) && !w.contains(0, 600));
    }

    #[test]
    fn rejects_bad_windows() {
        for bad in [
            "mon-thu 09:00-17:00",
            "mon-thu 09:00-17:00 CET",
            "fri-mon 09:00-17:00 UTC",
            "mon 09:00-09:00 UTC",
            "mon 9:00-17:00 UTC",
            "funday 09:00-17:00 UTC",
            "mon 09:00-24:01 UTC",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad} was accepted");
        }
    }
}
