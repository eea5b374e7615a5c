//! The parts of GitHub webhook payloads changegate acts on. Parsing is pure:
//! a payload either yields an [`Event`] or says precisely what is missing.

use serde::Deserialize;

/// A GitHub account, as it appears in `sender`, `user` and `owner`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Account {
    /// The login.
    pub login: String,
}

/// One end of a pull request: a branch and its commit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Ref {
    /// The branch name (without `refs/heads/`).
    #[serde(rename = "ref")]
    pub name: String,
    /// The commit.
    pub sha: String,
    /// The repository the branch lives in (absent in trimmed payloads).
    #[serde(default)]
    pub repo: Option<Repository>,
}

/// A repository as payloads name it: `repository`, `pull_request.base.repo`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Repository {
    /// GitHub's numeric id: survives renames and transfers.
    pub id: u64,
    /// `owner/name` today.
    pub full_name: String,
}

/// Where a delivery comes from: its `repository` and, for a GitHub App,
/// its `installation`. Either may be absent (`ping`, `installation`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// The repository the event happened in.
    #[serde(default)]
    pub repository: Option<Repository>,
    /// The App installation that delivered it.
    #[serde(default)]
    pub installation: Option<Installation>,
}

/// `installation` in an App's deliveries.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Installation {
    /// The installation id.
    pub id: u64,
}

/// Reads only where a delivery comes from, whatever its event.
pub fn envelope(event: &str, body: &[u8]) -> Result<Envelope, PayloadError> {
    decode(event, body)
}

/// A pull request as webhooks and `GET /repos/{o}/{r}/pulls` describe it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PullRequest {
    /// Its number.
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
    /// Whether it was merged (only in webhook and single-PR payloads).
    #[serde(default)]
    pub merged: Option<bool>,
    /// When it was merged, if it was (present in list payloads too).
    #[serde(default)]
    pub merged_at: Option<String>,
    /// When GitHub last changed it: orders deliveries that arrive late.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Who opened it.
    pub user: Account,
    /// The head branch and commit.
    pub head: Ref,
    /// The base branch and commit.
    pub base: Ref,
}

impl PullRequest {
    /// Merged, from whichever field the payload carries.
    pub fn is_merged(&self) -> bool {
        self.merged.unwrap_or(false) || self.merged_at.is_some()
    }

    /// `updated_at` in unix ms, 0 when absent or unreadable.
    pub fn updated_ms(&self) -> i64 {
        self.updated_at.as_deref().and_then(rfc3339_ms).unwrap_or(0)
    }
}

/// A review as webhooks and `GET …/pulls/{n}/reviews` describe it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Review {
    /// Its id.
    pub id: u64,
    /// The reviewer (absent for deleted accounts).
    pub user: Option<Account>,
    /// `approved`, `changes_requested`, `commented` or `dismissed`; the REST
    /// API spells these in upper case.
    pub state: String,
    /// The commit reviewed.
    pub commit_id: Option<String>,
    /// When it was submitted (RFC 3339).
    pub submitted_at: Option<String>,
}

pub use crate::store::ReviewState;

/// A review ready to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewFact {
    /// GitHub's review id.
    pub id: u64,
    /// The pull request.
    pub pr_number: u64,
    /// The reviewer's login.
    pub reviewer: String,
    /// What it says.
    pub state: ReviewState,
    /// The commit reviewed.
    pub commit_sha: String,
    /// Unix milliseconds.
    pub submitted_at: i64,
}

impl Review {
    /// The recordable fact, or why this review cannot be one. `sender` is
    /// the delivery's sender: for a submission, that is the reviewer, and it
    /// stands in when a payload omits `review.user`.
    pub fn fact(
        &self,
        pr_number: u64,
        sender: Option<&Account>,
    ) -> Result<ReviewFact, PayloadError> {
        let missing = |field: &'static str| PayloadError::Missing { field };
        let reviewer = self
            .user
            .as_ref()
            .or(sender)
            .ok_or(missing("review.user"))?;
        let state = ReviewState::parse(&self.state).ok_or_else(|| PayloadError::Invalid {
            field: "review.state",
            value: self.state.clone(),
        })?;
        let submitted = self
            .submitted_at
            .as_deref()
            .ok_or(missing("review.submitted_at"))?;
        Ok(ReviewFact {
            id: self.id,
            pr_number,
            reviewer: reviewer.login.clone(),
            state,
            commit_sha: self.commit_id.clone().ok_or(missing("review.commit_id"))?,
            submitted_at: rfc3339_ms(submitted).ok_or_else(|| PayloadError::Invalid {
                field: "review.submitted_at",
                value: submitted.to_string(),
            })?,
        })
    }
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Why a payload cannot be acted on. Such a delivery is recorded as
/// rejected, never retried: it will not parse better next time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or the wrong shape.
    #[error("malformed {event} payload: {message}")]
    Malformed {
        /// The `X-GitHub-Event`.
        event: String,
        /// serde's explanation, with the position.
        message: String,
    },
    /// A field changegate needs is absent.
    #[error("the payload has no `{field}`")]
    Missing {
        /// The dotted path.
        field: &'static str,
    },
    /// A field has a value changegate does not know.
    #[error("`{field}` is `{value}`, which changegate does not know")]
    Invalid {
        /// The dotted path.
        field: &'static str,
        /// What it was.
        value: String,
    },
}

/// A delivery, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `pull_request` opened, reopened, synchronize, edited or closed.
    PullRequest {
        /// The action.
        action: String,
        /// Who did it (for `synchronize`, the pusher).
        sender: String,
        /// The pull request after the action.
        pull_request: PullRequest,
    },
    /// `pull_request_review` submitted, edited or dismissed.
    Review {
        /// The action.
        action: String,
        /// The pull request reviewed.
        pull_request: PullRequest,
        /// The review.
        review: ReviewFact,
    },
    /// `push` to a branch.
    Push {
        /// The branch, without `refs/heads/`.
        branch: String,
        /// The new tip (all zeros when the branch was deleted).
        after: String,
    },
    /// Anything else: acknowledged and recorded, nothing to apply.
    Ignored {
        /// Why.
        why: String,
    },
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    sender: Account,
    pull_request: PullRequest,
}

#[derive(Deserialize)]
struct ReviewPayload {
    action: String,
    sender: Option<Account>,
    review: Review,
    pull_request: PullRequest,
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
}

fn decode<'a, T: Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, PayloadError> {
    serde_json::from_slice(body).map_err(|e| PayloadError::Malformed {
        event: event.to_string(),
        message: e.to_string(),
    })
}

/// Parses a delivery of `event` (the `X-GitHub-Event` header).
pub fn parse(event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    match event {
        "pull_request" => {
            let p: PullRequestPayload = decode(event, body)?;
            match p.action.as_str() {
                "opened" | "reopened" | "synchronize" | "edited" | "closed" => {
                    Ok(Event::PullRequest {
                        action: p.action,
                        sender: p.sender.login,
                        pull_request: p.pull_request,
                    })
                }
                other => Ok(Event::Ignored {
                    why: format!("pull_request action `{other}` does not change approvals"),
                }),
            }
        }
        "pull_request_review" => {
            let p: ReviewPayload = decode(event, body)?;
            match p.action.as_str() {
                "submitted" | "edited" | "dismissed" => {
                    let sender = (p.action == "submitted")
                        .then_some(p.sender.as_ref())
                        .flatten();
                    let mut review = p.review.fact(p.pull_request.number, sender)?;
                    if p.action == "dismissed" {
                        review.state = ReviewState::Dismissed;
                    }
                    Ok(Event::Review {
                        action: p.action,
                        pull_request: p.pull_request,
                        review,
                    })
                }
                other => Ok(Event::Ignored {
                    why: format!("pull_request_review action `{other}`"),
                }),
            }
        }
        "push" => {
            let p: PushPayload = decode(event, body)?;
            match p.reference.strip_prefix("refs/heads/") {
                Some(branch) => Ok(Event::Push {
                    branch: branch.to_string(),
                    after: p.after,
                }),
                None => Ok(Event::Ignored {
                    why: format!("push to {}, not a branch", p.reference),
                }),
            }
        }
        other => Ok(Event::Ignored {
            why: format!("event `{other}` is not one changegate acts on"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../shared/fixtures/github-webhooks/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn every_fixture_parses_or_is_ignored_with_a_reason() {
        let cases = [
            ("pull_request", "pull_request.opened.json"),
            ("pull_request", "pull_request.synchronize.json"),
            ("pull_request", "pull_request.closed.json"),
            ("pull_request_review", "pull_request_review.submitted.json"),
            (
                "pull_request_review",
                "pull_request_review.submitted.with-organization.json",
            ),
            ("pull_request_review", "pull_request_review.dismissed.json"),
            ("push", "push.json"),
            ("push", "push.with-new-branch.json"),
            ("check_run", "check_run.completed.json"),
            ("workflow_run", "workflow_run.completed.json"),
        ];
        for (event, file) in cases {
            assert!(parse(event, &fixture(file)).is_ok(), "{file}");
        }
    }

    #[test]
    fn a_synchronize_names_its_pusher_and_new_head() {
        let Event::PullRequest {
            action,
            sender,
            pull_request,
        } = parse("pull_request", &fixture("pull_request.synchronize.json")).unwrap()
        else {
            panic!("not a pull request event");
        };
        assert_eq!(action, "synchronize");
        assert!(!sender.is_empty());
        assert_eq!(pull_request.head.sha.len(), 40);
        assert!(!pull_request.is_merged());
    }

    #[test]
    fn a_dismissal_is_recorded_as_dismissed() {
        let Event::Review { review, .. } = parse(
            "pull_request_review",
            &fixture("pull_request_review.dismissed.json"),
        )
        .unwrap() else {
            panic!("not a review");
        };
        assert_eq!(review.state, ReviewState::Dismissed);
    }

    #[test]
    fn tag_pushes_and_unknown_events_are_ignored_with_a_reason() {
        assert!(matches!(
            parse("push", &fixture("push.json")).unwrap(),
            Event::Ignored { why } if why.contains("refs/tags/simple-tag")
        ));
        assert!(matches!(
            parse("push", &fixture("push.with-new-branch.json")).unwrap(),
            Event::Push { branch, .. } if branch == "master"
        ));
    }

    #[test]
    fn a_submission_without_review_user_is_the_senders_and_keeps_its_commit() {
        let Event::Review {
            review,
            pull_request,
            ..
        } = parse(
            "pull_request_review",
            &fixture("pull_request_review.submitted.approved.atlantis-trimmed.json"),
        )
        .unwrap()
        else {
            panic!("not a review");
        };
        assert_eq!(review.state, ReviewState::Approved);
        assert!(!review.reviewer.is_empty());
        // The fixture reviews an older commit than the head: a stale approval.
        assert_ne!(review.commit_sha, pull_request.head.sha);
    }

    #[test]
    fn a_review_with_no_reviewer_at_all_is_refused() {
        let body = br#"{"action":"submitted","review":{"id":1,"state":"approved","commit_id":"a","submitted_at":"2020-01-01T00:00:00Z"},
            "pull_request":{"number":1,"state":"open","user":{"login":"o"},"head":{"ref":"h","sha":"a"},"base":{"ref":"main","sha":"b"}}}"#;
        assert_eq!(
            parse("pull_request_review", body).unwrap_err(),
            PayloadError::Missing {
                field: "review.user"
            }
        );
    }

    #[test]
    fn malformed_json_says_where() {
        let err = parse("pull_request", b"{\"action\": ").unwrap_err();
        assert!(
            matches!(&err, PayloadError::Malformed { message, .. } if message.contains("line 1")),
            "{err}"
        );
    }
}
