//! Commands that act through the API: `approve`, `proceed`, `retry`,
//! `abandon`, `status`, `breaker`. The server URL and token come from
//! `CHANGEGATE_URL` and `CHANGEGATE_TOKEN`.

use std::path::Path;

use serde_json::Value;

use super::{exit, Format};
use crate::client::{Client, ClientError};
use crate::git::ChangeRepo;

fn with_client(
    f: impl FnOnce(&Client) -> Result<Value, ClientError>,
    done: impl FnOnce(&Value),
) -> u8 {
    let client = match Client::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    match f(&client) {
        Ok(v) => {
            done(&v);
            exit::OK
        }
        Err(ClientError::Refused {
            status,
            reason,
            detail,
        }) => {
            eprintln!("refused ({status}): {reason}: {detail}");
            if status == 409 {
                exit::REFUSED
            } else {
                exit::USAGE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

pub(super) fn approve(id: &str, digest: Option<&str>, repo: &Path, comment: &str) -> u8 {
    let digest = match digest {
        Some(d) => d.to_string(),
        None => {
            let computed = ChangeRepo::open(repo)
                .and_then(|r| Ok(r.at("HEAD")?.change(id)?.digest.to_string()));
            match computed {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::USAGE;
                }
            }
        }
    };
    with_client(
        |c| c.approve(id, &digest, comment),
        |v| {
            let verb = if v["created"] == true {
                "recorded"
            } else {
                "already on record"
            };
            println!(
                "approval of {id} at {digest} by {}: {verb}",
                v["approver"].as_str().unwrap_or("?")
            );
        },
    )
}

pub(super) fn proceed(id: &str, step: &str, reason: &str) -> u8 {
    with_client(
        |c| c.proceed(id, step, reason),
        |_| println!("go-ahead recorded for {id} step {step}"),
    )
}

pub(super) fn retry(id: &str, reason: &str) -> u8 {
    with_client(
        |c| c.retry(id, reason),
        |v| {
            println!(
                "{id}: {}",
                v["recorded"].as_str().unwrap_or("retry recorded")
            )
        },
    )
}

pub(super) fn rollback(id: &str, reason: &str) -> u8 {
    with_client(
        |c| c.rollback(id, reason),
        |v| {
            println!(
                "{id}: {}; `changegate exec {id} --continue` runs the rollbacks",
                v["recorded"].as_str().unwrap_or("rollback requested")
            )
        },
    )
}

pub(super) fn abandon(id: &str, reason: &str) -> u8 {
    with_client(
        |c| c.abandon(id, reason),
        |_| println!("{id} abandoned; its locks are released and its dependents stay refused"),
    )
}

/// The colour of a state word: red for what needs a person, blue while
/// running, green when done. `anstream` drops the colour when stdout is not
/// a terminal.
fn state_style(state: &str) -> anstyle::Style {
    use anstyle::{AnsiColor, Style};
    let colour = match state {
        "failed" | "rollback-failed" => AnsiColor::Red,
        "rolling-back" => AnsiColor::Yellow,
        "running" => AnsiColor::Blue,
        "completed" => AnsiColor::Green,
        "ready" | "approved" => AnsiColor::Magenta,
        _ => return Style::new().dimmed(),
    };
    Style::new().fg_color(Some(colour.into())).bold()
}

/// One line per change: state, id, approvals, steps, and what blocks it.
fn summary_line(c: &Value) -> String {
    let steps = c["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
    let done = steps.iter().filter(|s| s["state"] == "succeeded").count();
    let tally = c["approvals"]["policies"]
        .as_array()
        .and_then(|p| {
            p.iter().max_by_key(|p| {
                p["required"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(p["counted"].as_u64().unwrap_or(0))
            })
        })
        .map(|p| {
            format!(
                "{} of {} approvals",
                p["counted"]
                    .as_u64()
                    .unwrap_or(0)
                    .min(p["required"].as_u64().unwrap_or(0)),
                p["required"]
            )
        })
        .unwrap_or_default();
    let blocker = c["blockers"]
        .as_array()
        .and_then(|b| b.first())
        .map(|b| {
            format!(
                "  ⟂ {}: {}",
                b["reason"].as_str().unwrap_or(""),
                b["detail"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_default();
    let state = c["state"].as_str().unwrap_or("?");
    let style = state_style(state);
    format!(
        "{style}{state:<10}{style:#} {}  {tally}, {done}/{} steps{blocker}",
        c["id"].as_str().unwrap_or("?"),
        steps.len()
    )
}

pub(super) fn status(id: Option<&str>, format: Format) -> u8 {
    with_client(
        |c| match id {
            Some(id) => c.change(id),
            None => c.changes(),
        },
        |v| match format {
            Format::Json => println!("{v}"),
            Format::Text => match v.as_array() {
                Some(list) => list
                    .iter()
                    .for_each(|c| anstream::println!("{}", summary_line(c))),
                None => {
                    anstream::println!("{}", summary_line(v));
                    for s in v["steps"].as_array().map(Vec::as_slice).unwrap_or_default() {
                        println!(
                            "  {:<12} {}",
                            s["state"].as_str().unwrap_or(""),
                            s["id"].as_str().unwrap_or("")
                        );
                    }
                }
            },
        },
    )
}

pub(super) fn breaker_status() -> u8 {
    with_client(|c| c.breaker(), |v| println!("{}", v["breaker"]))
}

pub(super) fn breaker_reset(reason: &str, action: Option<&str>) -> u8 {
    with_client(
        |c| c.reset_breaker(reason, action),
        |v| match action {
            Some(a) => println!("`{a}` is allowed again within its budget"),
            None => println!("breaker reset: {}", v["breaker"]),
        },
    )
}

pub(super) fn alerts(format: Format) -> u8 {
    with_client(
        |c| c.alerts(),
        |v| match format {
            Format::Json => println!("{v}"),
            Format::Text => {
                for a in v.as_array().map(Vec::as_slice).unwrap_or_default() {
                    println!(
                        "{:<9} {}  {}",
                        a["state"].as_str().unwrap_or(""),
                        a["id"].as_str().unwrap_or(""),
                        a["annotations"]["summary"].as_str().unwrap_or("")
                    );
                    for d in a["deliveries"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                    {
                        println!(
                            "          → {} {}: {} after {} attempt(s){}",
                            d["sink"].as_str().unwrap_or(""),
                            d["event"].as_str().unwrap_or(""),
                            d["state"].as_str().unwrap_or(""),
                            d["attempts"],
                            d["last_error"]
                                .as_str()
                                .map(|e| format!(" (last error: {e})"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        },
    )
}
