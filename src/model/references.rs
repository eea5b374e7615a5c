//! Repository paths that shell text reaches for, so `validate` can warn
//! where a covered script or a step command uses a file the digest does not
//! cover (SPEC §11). Hermetic execution makes such a file absent for the
//! step; the warning says so before anyone approves it.
//!
//! This is a reader of common shell idioms, not a shell parser: it finds
//! `./x`, `$(dirname "$0")/x`, `. x`, `source x`, `sh x` and `bash x`, and,
//! in step commands, any word naming a repository path without `./`.

use super::digest::has_parent_component;

/// A path some shell text refers to, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// 1-based line in the text.
    pub line: usize,
    /// 1-based column of the word.
    pub column: usize,
    /// The path from the repository root (the step's working directory).
    pub path: String,
    /// The path without `./` (`sh ops/b.sh`): covered only through `include`.
    pub bare: bool,
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')
}

/// The folder of a repository path (`""` at the root).
fn folder(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Joins `rel` onto folder `dir`, resolving `./` and refusing `..`.
fn join(dir: &str, rel: &str) -> Option<String> {
    let rel = rel.trim_start_matches("./");
    let joined = if dir.is_empty() {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    };
    (!joined.is_empty() && !has_parent_component(&joined) && !joined.starts_with('/'))
        .then_some(joined)
}

/// The path word starting at byte `at` of `line`, unquoted.
fn word_at(line: &str, at: usize) -> &str {
    let rest = line[at..].trim_start_matches(['"', '\'']);
    let end = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
    &rest[..end]
}

/// Where the script's own folder is written: `$(dirname "$0")/`.
const SELF_DIR: [&str; 4] = [
    "$(dirname \"$0\")/",
    "$(dirname $0)/",
    "\"$(dirname \"$0\")\"/",
    "${0%/*}/",
];

/// Commands whose next word is a file they run or read.
const RUNNERS: [&str; 4] = [".", "source", "sh", "bash"];

/// References in the shell text of a script at `script_path` (so
/// `$(dirname "$0")` resolves), or of a step command (`script_path`
/// `None`: bare words naming paths count too, checked by the caller).
pub fn references(text: &str, script_path: Option<&str>) -> Vec<Reference> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with('#') {
            continue;
        }
        let mut push = |at: usize, path: Option<String>, bare: bool| {
            if let Some(path) = path {
                out.push(Reference {
                    line: n + 1,
                    column: at + 1,
                    path,
                    bare,
                });
            }
        };
        // `$(dirname "$0")/x`: next to the script.
        if let Some(script) = script_path {
            for pattern in SELF_DIR {
                for (at, _) in line.match_indices(pattern) {
                    let word = word_at(line, at + pattern.len());
                    push(at, join(folder(script), word), false);
                }
            }
        }
        // `./x`, where the previous character does not continue a word.
        let mut prev: Option<char> = None;
        for (at, c) in line.char_indices() {
            if c == '.' && !prev.is_some_and(is_path_char) && line[at..].starts_with("./") {
                let word = word_at(line, at);
                let after_self_dir = SELF_DIR
                    .iter()
                    .any(|p| line[..at].ends_with(p.trim_end_matches('/')));
                if !after_self_dir {
                    push(at, join("", word), false);
                }
            }
            prev = Some(c);
        }
        // `. x`, `source x`, `sh x`, `bash x`: the word after the runner.
        let words: Vec<(usize, &str)> = line
            .split_whitespace()
            .map(|w| (w.as_ptr() as usize - line.as_ptr() as usize, w))
            .collect();
        for pair in words.windows(2) {
            let ((_, runner), (at, target)) = (pair[0], pair[1]);
            let runner = runner.trim_start_matches(['(', '{', ';', '&', '|']);
            let target_clean = target.trim_matches(['"', '\'', ';', ')']);
            if RUNNERS.contains(&runner)
                && !target_clean.starts_with(['$', '-', '/', '.'])
                && target_clean.chars().all(is_path_char)
            {
                push(at, join("", target_clean), true);
            }
        }
    }
    out
}

/// Words of a step command that could name repository files without `./`
/// (contain a `/`, are not flags, URLs or absolute paths), with positions.
pub fn bare_words(command: &str) -> Vec<(usize, &str)> {
    command
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - command.as_ptr() as usize, w))
        .map(|(at, w)| (at, w.trim_matches(['"', '\'', ';', ')', '('])))
        .filter(|(_, w)| {
            w.contains('/')
                && !w.starts_with(['.', '/', '-', '$'])
                && w.chars().all(is_path_char)
                && !has_parent_component(w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str, script: Option<&str>) -> Vec<(String, bool)> {
        references(text, script)
            .into_iter()
            .map(|r| (r.path, r.bare))
            .collect()
    }

    #[test]
    fn a_helper_next_to_the_script_resolves_against_its_folder() {
        assert_eq!(
            paths(". \"$(dirname \"$0\")/helper.sh\"\n", Some("ops/a.sh")),
            [("ops/helper.sh".to_string(), false)]
        );
    }

    #[test]
    fn dot_slash_source_and_runners_are_found_with_positions() {
        let text = "#!/bin/sh\n# ./not-this.sh\n./x.sh --flag\nsource lib/common.sh\nsh ops/b.sh && bash \"$X\"\n";
        let refs = references(text, Some("run.sh"));
        let found: Vec<(usize, usize, &str)> = refs
            .iter()
            .map(|r| (r.line, r.column, r.path.as_str()))
            .collect();
        assert_eq!(
            found,
            [(3, 1, "x.sh"), (4, 8, "lib/common.sh"), (5, 4, "ops/b.sh")]
        );
    }

    #[test]
    fn parent_folders_and_absolute_paths_are_not_repository_paths() {
        assert!(paths("sh /etc/x.sh\n. ../up.sh\n", Some("a.sh")).is_empty());
    }

    #[test]
    fn bare_words_are_the_path_like_ones() {
        assert_eq!(
            bare_words("sh ops/b.sh --to https://x/y \"$OLD\" ./covered.sh"),
            [(3, "ops/b.sh")]
        );
    }
}
