//! The audit log's hash chain (SPEC §8): `hash = sha256(prev_hash ‖ canonical event)`.
//!
//! The canonical event is the JSON object `{actor, at, change, data, kind,
//! seq}` with keys sorted and no whitespace; `prev_hash` is the previous
//! event's hash in hex (64 zeros before the first event).

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Who caused it: an identity name, or `changegate` for the server itself.
    pub actor: String,
    /// What happened, e.g. `change.seen`, `approval.recorded`.
    pub kind: String,
    /// The change it concerns, if any.
    pub change: Option<String>,
    /// Details, canonical JSON.
    #[schema(value_type = Object)]
    pub data: Value,
    /// The previous event's hash.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

/// The bytes hashed after `prev_hash`.
pub fn canonical(
    seq: i64,
    at: i64,
    actor: &str,
    kind: &str,
    change: Option<&str>,
    data: &Value,
) -> String {
    // serde_json's map is ordered by key, so this serialisation is canonical.
    json!({"seq": seq, "at": at, "actor": actor, "kind": kind, "change": change, "data": data})
        .to_string()
}

/// `hex(sha256(prev_hash ‖ canonical))`.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// The first place the chain breaks, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// An event's content no longer matches its hash.
    Edited {
        /// The event.
        seq: i64,
    },
    /// Events are missing before this one.
    Removed {
        /// The sequence number expected.
        expected: i64,
        /// The one found.
        found: i64,
    },
    /// The event does not follow the one before it (moved or swapped).
    Reordered {
        /// The event.
        seq: i64,
    },
    /// The chain ends before the recorded head (events removed at the end).
    Truncated {
        /// The last event found.
        last: i64,
        /// The head's sequence number.
        head: i64,
    },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainBreak::Edited { seq } => write!(
                f,
                "event {seq} was edited: its content does not match its hash"
            ),
            ChainBreak::Removed { expected, found } => {
                write!(
                    f,
                    "event {expected} was removed: the chain jumps from {} to {found}",
                    expected - 1
                )
            }
            ChainBreak::Reordered { seq } => {
                write!(
                    f,
                    "event {seq} was moved or swapped: it does not follow event {}",
                    seq - 1
                )
            }
            ChainBreak::Truncated { last, head } => {
                write!(
                    f,
                    "events after {last} were removed: the head records {head}"
                )
            }
        }
    }
}

/// Checks events in `seq` order against each other and the recorded head.
pub fn verify(events: &[AuditEvent], head_seq: i64, head_hash: &str) -> Result<(), ChainBreak> {
    let mut prev_hash = GENESIS.to_string();
    let mut prev_seq = 0;
    for e in events {
        if e.seq != prev_seq + 1 {
            return Err(ChainBreak::Removed {
                expected: prev_seq + 1,
                found: e.seq,
            });
        }
        let recomputed = chain_hash(
            &e.prev_hash,
            &canonical(e.seq, e.at, &e.actor, &e.kind, e.change.as_deref(), &e.data),
        );
        if recomputed != e.hash {
            return Err(ChainBreak::Edited { seq: e.seq });
        }
        if e.prev_hash != prev_hash {
            return Err(ChainBreak::Reordered { seq: e.seq });
        }
        prev_hash = e.hash.clone();
        prev_seq = e.seq;
    }
    if prev_seq != head_seq || prev_hash != head_hash {
        return Err(ChainBreak::Truncated {
            last: prev_seq,
            head: head_seq,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let data = json!({"n": seq});
                let hash = chain_hash(
                    &prev,
                    &canonical(seq, seq * 10, "alice", "test", Some("c"), &data),
                );
                let e = AuditEvent {
                    seq,
                    at: seq * 10,
                    actor: "alice".into(),
                    kind: "test".into(),
                    change: Some("c".into()),
                    data,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    fn head(events: &[AuditEvent]) -> (i64, String) {
        events
            .last()
            .map_or((0, GENESIS.into()), |e| (e.seq, e.hash.clone()))
    }

    #[test]
    fn an_intact_chain_verifies() {
        let events = chain(5);
        let (s, h) = head(&events);
        assert_eq!(verify(&events, s, &h), Ok(()));
        assert_eq!(verify(&[], 0, GENESIS), Ok(()));
    }

    #[test]
    fn an_edited_event_is_named() {
        let mut events = chain(5);
        let (s, h) = head(&events);
        events[2].actor = "mallory".into();
        assert_eq!(verify(&events, s, &h), Err(ChainBreak::Edited { seq: 3 }));
    }

    #[test]
    fn a_removed_event_is_named() {
        let mut events = chain(5);
        let (s, h) = head(&events);
        events.remove(1);
        assert_eq!(
            verify(&events, s, &h),
            Err(ChainBreak::Removed {
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn a_swapped_pair_is_named() {
        let mut events = chain(5);
        let (s, h) = head(&events);
        // Swap contents but keep the sequence numbers in place.
        let (a, b) = (events[1].clone(), events[2].clone());
        events[1] = AuditEvent { seq: 2, ..b };
        events[2] = AuditEvent { seq: 3, ..a };
        assert!(matches!(
            verify(&events, s, &h),
            Err(ChainBreak::Edited { seq: 2 })
        ));
    }

    #[test]
    fn a_removed_tail_is_detected_against_the_head() {
        let mut events = chain(5);
        let (s, h) = head(&events);
        events.pop();
        assert_eq!(
            verify(&events, s, &h),
            Err(ChainBreak::Truncated { last: 4, head: 5 })
        );
    }
}
