//! The step breaker (SPEC §6): it opens when `max_failures` steps fail or
//! are interrupted within `window`, across all changes, and stays open
//! until an operator resets it.

use serde::Serialize;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures that open the breaker.
    pub max_failures: usize,
    /// Within this many milliseconds.
    pub window_ms: i64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            max_failures: 3,
            window_ms: 3_600_000,
        }
    }
}

/// Whether claims may proceed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Breaker {
    /// Claims may proceed.
    Closed,
    /// Every claim is refused until a reset.
    Open {
        /// When the failure that opened it happened (unix ms).
        since: i64,
        /// How many failures were inside the window then.
        failures: usize,
    },
}

/// The breaker state from step failure times (unix ms, any order) and the
/// last reset. Opening is latched: failures ageing out of the window do
/// not close it; only a reset does, and only failures after it count.
pub fn breaker_state(failures: &[i64], last_reset: Option<i64>, config: BreakerConfig) -> Breaker {
    let mut times: Vec<i64> = failures
        .iter()
        .copied()
        .filter(|t| last_reset.is_none_or(|r| *t > r))
        .collect();
    times.sort_unstable();
    let max = config.max_failures.max(1);
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= config.window_ms {
            start += 1;
        }
        let in_window = end - start + 1;
        if in_window >= max {
            return Breaker::Open {
                since: times[end],
                failures: in_window,
            };
        }
    }
    Breaker::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn three_failures_within_the_window_open_it() {
        let b = breaker_state(&[0, 10 * MIN, 20 * MIN], None, BreakerConfig::default());
        assert_eq!(
            b,
            Breaker::Open {
                since: 20 * MIN,
                failures: 3
            }
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not() {
        let b = breaker_state(
            &[0, 40 * MIN, 80 * MIN, 120 * MIN],
            None,
            BreakerConfig::default(),
        );
        assert_eq!(b, Breaker::Closed);
    }

    #[test]
    fn an_open_breaker_stays_open_as_failures_age() {
        // Nothing about "now" enters: the three failures happened, so it is open.
        let b = breaker_state(&[0, MIN, 2 * MIN], None, BreakerConfig::default());
        assert!(matches!(b, Breaker::Open { .. }));
    }

    #[test]
    fn a_reset_closes_it_and_only_later_failures_count() {
        let failures = [0, MIN, 2 * MIN, 3 * MIN, 4 * MIN];
        assert_eq!(
            breaker_state(&failures, Some(2 * MIN), BreakerConfig::default()),
            Breaker::Closed
        );
        let b = breaker_state(
            &[0, MIN, 2 * MIN, 3 * MIN, 4 * MIN, 5 * MIN],
            Some(2 * MIN),
            BreakerConfig::default(),
        );
        assert_eq!(
            b,
            Breaker::Open {
                since: 5 * MIN,
                failures: 3
            }
        );
    }

    #[test]
    fn the_threshold_is_configurable() {
        let config = BreakerConfig {
            max_failures: 1,
            window_ms: MIN,
        };
        assert!(matches!(
            breaker_state(&[5], None, config),
            Breaker::Open { .. }
        ));
    }
}
