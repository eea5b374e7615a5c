//! Output hygiene: secrets never reach the store, the pages, the audit
//! trail or an alert sink. Applied by `exec` before a report leaves the CI
//! runner, and again by the server to output tails, reasons and comments.

/// What `[redacted]` replaces.
const MARK: &str = "[redacted]";

/// Words in a variable name that mark its value as secret.
const SECRET_WORDS: [&str; 5] = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY"];

/// Whether a variable called `name` holds a secret, by its name.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// Replaces, in `text`:
/// - each of `secrets` (values of 8 bytes or more);
/// - anything shaped like a changegate token (`cg_` and 64 hex);
/// - URL credentials (`scheme://user:pass@host` keeps only `scheme://[redacted]@host`);
/// - the value of every secret-named assignment (`PGPASSWORD=…`, `api_key=…`).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        out = out.replace(s.as_str(), MARK);
    }
    let out = tokens(&out);
    let out = url_credentials(&out);
    assignments(&out)
}

fn tokens(text: &str) -> String {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("cg_") {
        let candidate = &rest[i + 3..];
        let hex_len = candidate.bytes().take_while(u8::is_ascii_hexdigit).count();
        result.push_str(&rest[..i]);
        if hex_len >= 64 {
            result.push_str(MARK);
            rest = &candidate[hex_len..];
        } else {
            result.push_str("cg_");
            rest = candidate;
        }
    }
    result.push_str(rest);
    result
}

/// Ends a URL's authority (where user info must appear, if anywhere).
fn ends_authority(c: char) -> bool {
    c.is_whitespace() || matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`')
}

fn url_credentials(text: &str) -> String {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        result.push_str(before);
        let authority_end = after.find(ends_authority).unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) if at > 0 => {
                result.push_str(MARK);
                rest = &after[at..];
            }
            _ => rest = after,
        }
    }
    result.push_str(rest);
    result
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn assignments(text: &str) -> String {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('=') {
        let (before, after) = rest.split_at(i);
        let name_start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_name_char(*c))
            .last()
            .map_or(before.len(), |(j, _)| j);
        result.push_str(before);
        result.push('=');
        let after = &after[1..];
        let value_end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';' | '&'))
            .unwrap_or(after.len());
        if is_secret_name(&before[name_start..]) && value_end > 0 && !after.starts_with(MARK) {
            result.push_str(MARK);
            rest = &after[value_end..];
        } else {
            rest = after;
        }
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_tokens_are_removed() {
        let token = format!("cg_{}", "ab".repeat(32));
        let text = format!("given hunter2hunter2 token {token} cg_short");
        assert_eq!(
            redact(&text, &["hunter2hunter2".into()]),
            "given [redacted] token [redacted] cg_short"
        );
    }

    #[test]
    fn url_credentials_are_removed_and_the_host_kept() {
        assert_eq!(
            redact("connect postgres://app:pw@db/app failed", &[]),
            "connect postgres://[redacted]@db/app failed"
        );
        assert_eq!(
            redact(
                "git clone https://x-access-token:ghs_abc@github.com/a/b",
                &[]
            ),
            "git clone https://[redacted]@github.com/a/b"
        );
        assert_eq!(
            redact("see https://example.com/a@b and mailto:x@y", &[]),
            "see https://example.com/a@b and mailto:x@y"
        );
    }

    #[test]
    fn secret_named_assignments_lose_their_values() {
        assert_eq!(
            redact("PGPASSWORD=hunter2 PGHOST=db api_key=abc;x=1", &[]),
            "PGPASSWORD=[redacted] PGHOST=db api_key=[redacted];x=1"
        );
    }

    #[test]
    fn redaction_is_idempotent() {
        let once = redact("postgres://a:b@h PASSWORD=x cg_", &[]);
        assert_eq!(redact(&once, &[]), once);
    }
}
