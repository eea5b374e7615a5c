//! The states the store records, as types: each has one spelling (its wire
//! and column word, `as_str`), is parsed once where a row is read, and is
//! compared as a value everywhere else.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stored word that names no known state: the row is corrupt.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} `{word}`")]
pub struct UnknownWord {
    kind: &'static str,
    word: String,
}

/// An enum stored as one of a fixed set of words: `as_str`, `FromStr`,
/// `Display` and sqlx's text encoding, from one list.
macro_rules! words {
    ($(#[$doc:meta])* $name:ident, $kind:literal { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $word)] $variant,)+
        }

        impl $name {
            /// The word stored and shown.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word,)+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err(UnknownWord { kind: $kind, word: s.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <str as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                let word: &'q str = self.as_str();
                <&'q str as sqlx::Encode<'q, sqlx::Any>>::encode(word, buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(
                value: <sqlx::Any as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let word = <String as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok(word.parse::<$name>()?)
            }
        }
    };
}

words! {
    /// Where an attempt at a step stands.
    AttemptState, "attempt state" {
        /// Claimed; its lease is running.
        Running = "running",
        /// Every command exited 0.
        Succeeded = "succeeded",
        /// A command failed or timed out.
        Failed = "failed",
        /// Its lease expired without a report: the outcome is unknown.
        Interrupted = "interrupted",
    }
}

impl AttemptState {
    /// Failed or interrupted: the step did not succeed and nobody knows
    /// better.
    pub fn ended_badly(self) -> bool {
        matches!(self, AttemptState::Failed | AttemptState::Interrupted)
    }
}

words! {
    /// Whether an alert is firing; also the event a delivery carries.
    AlertState, "alert state" {
        /// Raised and not resolved.
        Firing = "firing",
        /// Resolved by the cause going away or a person acting.
        Resolved = "resolved",
    }
}

words! {
    /// Where one delivery of an alert event to one sink stands.
    DeliveryState, "delivery state" {
        /// Not yet tried.
        Pending = "pending",
        /// Delivered; Alertmanager's are re-sent while due.
        Delivered = "delivered",
        /// The last try failed; retried with backoff.
        Failing = "failing",
        /// Nothing more to send.
        Done = "done",
    }
}

words! {
    /// How a webhook delivery in the inbox ended.
    InboxOutcome, "inbox outcome" {
        /// Its facts were recorded.
        Applied = "applied",
        /// Recorded and deliberately not acted on (another repository, a
        /// pull request into another branch, an event not used).
        Ignored = "ignored",
        /// Its payload cannot be acted on; retrying will not help.
        Rejected = "rejected",
        /// Given up after the last retry.
        Failed = "failed",
    }
}

words! {
    /// What an alert is about.
    AlertKind, "alert kind" {
        /// A step failed or was interrupted.
        StepFailed = "step-failed",
        /// The step breaker opened.
        BreakerOpen = "breaker-open",
        /// A fleet action hit a locked target.
        ActionRefused = "action-refused",
        /// A fleet action kind spent its budget; refused until reset.
        ActionBudgetSpent = "action-budget-spent",
        /// A policy file on the default branch does not validate.
        PoliciesInvalid = "policies-invalid",
        /// A policy revision on the default branch was not approved.
        PolicyUnapproved = "policy-unapproved",
        /// A rollback attempt failed or was interrupted.
        RollbackFailed = "rollback-failed",
        /// A firing alert on a target halted a rollout (SPEC §10).
        RolloutHalted = "rollout-halted",
    }
}

words! {
    /// Which way an attempt ran (SPEC §11).
    Phase, "attempt phase" {
        /// The step's own commands.
        Step = "step",
        /// The step's declared `rollback`.
        Rollback = "rollback",
    }
}

words! {
    /// What a GitHub review says, normalised across webhook and REST spellings.
    ReviewState, "review state" {
        /// APPROVED.
        Approved = "approved",
        /// CHANGES_REQUESTED.
        ChangesRequested = "changes_requested",
        /// COMMENTED: neither approves nor blocks.
        Commented = "commented",
        /// DISMISSED.
        Dismissed = "dismissed",
        /// PENDING: not submitted yet.
        Pending = "pending",
    }
}

impl ReviewState {
    /// Parses either spelling (webhooks write `approved`, the REST API
    /// `APPROVED`); `None` for anything else.
    pub fn parse(s: &str) -> Option<ReviewState> {
        s.to_ascii_lowercase().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_round_trips_and_an_unknown_one_is_an_error() {
        for s in [
            AttemptState::Running,
            AttemptState::Succeeded,
            AttemptState::Failed,
            AttemptState::Interrupted,
        ] {
            assert_eq!(s.as_str().parse::<AttemptState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(
            "done".parse::<DeliveryState>().unwrap(),
            DeliveryState::Done
        );
        let e = "exploded".parse::<AttemptState>().unwrap_err();
        assert_eq!(e.to_string(), "unknown attempt state `exploded`");
    }
}
