//! Fleet rollouts (SPEC §10): how a change's targets are cut into waves.
//! Pure: the targets and the declared shares in, the waves out.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize, Serializer};

use super::Duration;

/// A size of the fleet: a count of targets, or a share of them (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// This many targets.
    Count(u32),
    /// This percentage of the targets, rounded up (1 to 100).
    Percent(u8),
}

impl JsonSchema for Share {
    fn schema_name() -> Cow<'static, str> {
        "Share".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A count of targets, or a share of them such as \"25%\"",
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": "^([1-9][0-9]?|100)%$"}
            ]
        })
    }
}

impl Share {
    /// How many of `n` targets this share is: a percentage rounds up, so
    /// every non-empty share of a non-empty fleet is at least one target.
    pub fn of(self, n: usize) -> usize {
        match self {
            Share::Count(c) => (c as usize).min(n),
            Share::Percent(p) => (n * p as usize).div_ceil(100),
        }
    }
}

impl std::str::FromStr for Share {
    type Err = String;

    /// `"N%"` with N from 1 to 100, or a positive count.
    fn from_str(s: &str) -> Result<Share, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Share::Percent(p)),
                _ => Err(format!(
                    "`{s}` is not a percentage: write 1% to 100%, e.g. \"25%\""
                )),
            };
        }
        match s.parse::<u32>() {
            Ok(c) if c > 0 => Ok(Share::Count(c)),
            _ => Err(format!(
                "`{s}` is neither a positive count nor a percentage such as \"25%\""
            )),
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Share::Count(c) => write!(f, "{c}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Share::Count(c) => s.serialize_u32(*c),
            Share::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

/// The stored form (a number or `"N%"`), read back when the server
/// rebuilds its view from the store.
impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Share, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(c) => Ok(Share::Count(c)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How a change's per-target steps sweep its targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The first wave: a count or `"N%"`; default 1.
    #[serde(default = "one")]
    pub canary: Share,
    /// The cumulative share done after each later wave: increasing, ending
    /// at `"100%"`; default `["100%"]`.
    #[serde(default = "all")]
    pub waves: Vec<Share>,
    /// After each wave, how long before the next may start; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<Duration>,
    /// At most this many targets of a wave running at once; default 1.
    #[serde(default = "one_u32")]
    #[schemars(range(min = 1))]
    pub parallel: u32,
}

fn one() -> Share {
    Share::Count(1)
}

fn all() -> Vec<Share> {
    vec![Share::Percent(100)]
}

fn one_u32() -> u32 {
    1
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout {
            canary: one(),
            waves: all(),
            bake: None,
            parallel: 1,
        }
    }
}

impl Rollout {
    /// The targets cut into waves, in their declared order: the canary,
    /// then each later wave up to its cumulative share. A wave that would
    /// add no target (a small fleet) is left out.
    pub fn waves<'t>(&self, targets: &'t [String]) -> Vec<&'t [String]> {
        let n = targets.len();
        let mut cuts = vec![self.canary.of(n)];
        cuts.extend(self.waves.iter().map(|w| w.of(n)));
        let mut out = Vec::new();
        let mut done = 0;
        for cut in cuts {
            let cut = cut.clamp(done, n);
            if cut > done {
                out.push(&targets[done..cut]);
                done = cut;
            }
        }
        if done < n {
            out.push(&targets[done..]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("c{i:02}")).collect()
    }

    #[test]
    fn shares_parse_and_round_up() {
        assert_eq!("25%".parse(), Ok(Share::Percent(25)));
        assert_eq!("3".parse(), Ok(Share::Count(3)));
        for bad in ["0%", "101%", "2.5%", "%", "-1", "0", "ten"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
        assert_eq!(Share::Percent(25).of(40), 10);
        assert_eq!(Share::Percent(25).of(3), 1);
        assert_eq!(Share::Count(5).of(3), 3);
    }

    #[test]
    fn waves_cut_the_targets_in_order() {
        let targets = fleet(40);
        let r = Rollout {
            canary: Share::Count(1),
            waves: vec![Share::Percent(25), Share::Percent(100)],
            bake: None,
            parallel: 4,
        };
        let sizes: Vec<usize> = r.waves(&targets).iter().map(|w| w.len()).collect();
        assert_eq!(sizes, [1, 9, 30]);
        assert_eq!(r.waves(&targets)[0], ["c01"]);
        assert_eq!(r.waves(&targets)[1][0], "c02");
        // Two targets: 25% adds nothing after the canary, so that wave goes.
        let sizes: Vec<usize> = r.waves(&fleet(2)).iter().map(|w| w.len()).collect();
        assert_eq!(sizes, [1, 1]);
        assert_eq!(Rollout::default().waves(&fleet(3)).len(), 2);
    }
}
