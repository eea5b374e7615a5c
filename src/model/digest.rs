//! The digest an approval binds to (SPEC §1).
//!
//! The covered paths of change `C` are `changes/C.yaml`, every `./PATH`
//! token in its commands, and every blob under its `include` entries. The
//! digest is `sha256:` + hex(sha256(concat over the sorted covered paths of
//! `PATH \0 BLOB_OID_HEX \n`, or `PATH \0 BLOB_OID_HEX \0 100755 \n` for an
//! executable file)). SPEC §1 has no mode; but `exec` writes files with
//! git's modes, so a mode the digest does not bind would let a push turn a
//! reviewed, inert file into a program without a new approval.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{ChangeSet, Entry, TreeView};

/// What a pull request, or a review's commit, records for a change or
/// policy file that does not exist there.
pub const ABSENT: &str = "absent";

/// What a pull request, or a review's commit, records for a policy file it
/// deletes: the deletion of that blob (the text at the merge base with the
/// default branch), so approving one deletion never approves another.
pub fn deletion_of(blob: &str) -> String {
    format!("deleted:{blob}")
}

/// Pull requests record the policy files they touch beside the change ids
/// they touch, by path (a change id never holds a `/`); a policy file's
/// "digest" is its git blob id.
pub fn is_policy_path(key: &str) -> bool {
    key.starts_with("policies/")
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')
}

/// The `PATH` of every `./PATH` token in a command, without the `./` and
/// without a trailing `/`. A token starts where the previous character is
/// not itself a path character, so `../x` and `a./b` are not tokens.
pub fn command_paths(command: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut prev: Option<char> = None;
    for (i, c) in command.char_indices() {
        if c == '.' && !prev.is_some_and(is_path_char) && command[i..].starts_with("./") {
            let rest = &command[i + 2..];
            let end = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches('/');
            if !path.is_empty() {
                out.push(path);
            }
        }
        prev = Some(c);
    }
    out
}

/// Does the path have a `..` component?
pub fn has_parent_component(path: &str) -> bool {
    path.split('/').any(|part| part == "..")
}

/// How many folders deep a path, or a tree read from git, may go. Lookups
/// go one folder at a time, and a change set or a pushed tree can name a
/// path as deep as its author likes: 300,000 folders once overflowed the
/// stack and took the process down. Real repositories stay far shallower.
pub const MAX_PATH_DEPTH: usize = 256;

/// Does the path go more than [`MAX_PATH_DEPTH`] folders deep? Every `/`
/// counts, leading and repeated ones too: each is a step of a lookup.
pub fn is_too_deep(path: &str) -> bool {
    path.bytes().filter(|&b| b == b'/').count() > MAX_PATH_DEPTH
}

/// Why a path is refused for its depth, for diagnostics.
pub fn too_deep(path: &str) -> String {
    let shown: String = path.chars().take(60).collect();
    format!("`{shown}…` is more than {MAX_PATH_DEPTH} folders deep")
}

/// The longest path, and the longest name in one, that a change set may
/// name: Linux's `PATH_MAX` and `NAME_MAX`, so every path that passes can
/// be checked out. Lookups cache each prefix of a path, so one path of
/// megabytes would otherwise hold hundreds of megabytes of keys.
pub const MAX_PATH_BYTES: usize = 4096;
/// See [`MAX_PATH_BYTES`].
pub const MAX_NAME_BYTES: usize = 255;

/// Why a path a change set names cannot be looked up in a tree, if it
/// cannot: too deep, too long, a name too long, or a NUL byte (no git name
/// holds one, and libgit2's lookup by name panics on it).
pub fn unreadable_path(path: &str) -> Option<String> {
    // Checked on every lookup: nothing is formatted unless refused.
    let why = if is_too_deep(path) {
        return Some(too_deep(path));
    } else if path.contains('\0') {
        "holds a NUL byte".to_string()
    } else if path.len() > MAX_PATH_BYTES {
        format!("is longer than {MAX_PATH_BYTES} bytes")
    } else if path.split('/').any(|name| name.len() > MAX_NAME_BYTES) {
        format!("holds a name longer than {MAX_NAME_BYTES} bytes")
    } else {
        return None;
    };
    let shown: String = path.chars().take(60).collect();
    let more = if shown.len() < path.len() { "…" } else { "" };
    Some(format!("`{}{more}` {why}", shown.escape_debug()))
}

/// At most this many entries (files and folders) are read below the
/// folders one change covers: a pusher can write a small tree that names
/// one subtree many times on each level (a tree bomb), whose files grow as
/// a power of its depth.
pub const MAX_FOLDER_ENTRIES: usize = 100_000;

/// At most this many bytes of paths are listed below one covered folder:
/// deep folders with long names make long paths.
pub const MAX_FOLDER_PATH_BYTES: usize = 16 << 20;

/// Why a blob under an odd git mode is not covered, for diagnostics.
pub fn odd_mode(path: &str, mode: i32) -> String {
    format!("`{path}` has git mode {mode:o}, which git checks out as something other than a file: the digest would cover what no reviewer sees as a file; commit it as 100644 or 100755")
}

/// Why a symbolic link is not covered, for diagnostics.
pub fn symlink(path: &str) -> String {
    format!("`{path}` is a symbolic link: the digest would cover the link's text, not what it runs; commit the file itself")
}

/// A covered path and the id of its blob at the commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct CoveredPath {
    /// Slash-separated path from the repository root.
    pub path: String,
    /// The git blob id, hex.
    pub blob: String,
    /// Whether git's mode for it is 100755; the digest binds it. Always
    /// written and required when read: a stored view from before it was
    /// bound has no such field, so it is read again from git.
    pub executable: bool,
}

/// The paths a change's digest starts from: its own file, the paths its
/// commands run, its `include` entries and its `targets_from` file. Each
/// is a file or a folder; everything the digest covers is one of them or
/// below one, so a commit that touches none of them leaves the digest as
/// it was.
pub fn covered_roots(change: &ChangeSet) -> Vec<String> {
    let mut roots = vec![format!("changes/{}.yaml", change.id)];
    for step in &change.steps {
        for (_, cmd) in step.commands() {
            roots.extend(command_paths(cmd).into_iter().map(str::to_string));
        }
    }
    roots.extend(
        change
            .include
            .iter()
            .map(|p| p.trim_end_matches('/').to_string()),
    );
    // The fleet a rollout sweeps is part of what was approved.
    roots.extend(
        change
            .targets_from
            .as_deref()
            .map(|p| p.trim_start_matches("./").to_string()),
    );
    roots
}

/// The covered paths of `change` in `tree`, sorted by path, each once.
///
/// A `./PATH` or `include` entry naming a folder covers every blob below it.
/// Fails with the offending path when one is not in the tree; `validate`
/// reports that case with its position.
pub fn covered_paths(change: &ChangeSet, tree: &dyn TreeView) -> Result<Vec<CoveredPath>, String> {
    let mut covered = BTreeMap::new();
    // Shared by every folder: a change may name one large folder many times.
    let mut budget = MAX_FOLDER_ENTRIES;
    for path in covered_roots(change) {
        let path = path.as_str();
        if has_parent_component(path) {
            return Err(format!("`{path}` contains `..`"));
        }
        if is_too_deep(path) {
            return Err(too_deep(path));
        }
        match tree.entry(path) {
            Some(Entry::Blob(oid)) => {
                covered.insert(path.to_string(), (oid, false));
            }
            Some(Entry::Executable(oid)) => {
                covered.insert(path.to_string(), (oid, true));
            }
            Some(Entry::Tree) => {
                for (below, entry) in tree.blobs_under(path, &mut budget)? {
                    match entry {
                        Entry::Blob(oid) => covered.insert(below, (oid, false)),
                        Entry::Executable(oid) => covered.insert(below, (oid, true)),
                        Entry::OddMode(mode) => return Err(odd_mode(&below, mode)),
                        Entry::Link(_) | Entry::Tree => return Err(symlink(&below)),
                    };
                }
            }
            Some(Entry::Link(_)) => return Err(symlink(path)),
            Some(Entry::OddMode(mode)) => return Err(odd_mode(path, mode)),
            None => return Err(format!("`{path}` is not in the tree")),
        }
    }
    Ok(covered
        .into_iter()
        .map(|(path, (blob, executable))| CoveredPath {
            path,
            blob,
            executable,
        })
        .collect())
}

/// `sha256:<hex>`: what an approval binds to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// The digest over covered paths, which must be sorted and unique.
    pub fn of(covered: &[CoveredPath]) -> Digest {
        Digest::from_sha256(Digest::sha256_of(covered))
    }

    /// The SHA-256 behind [`Digest::of`], as bytes.
    pub fn sha256_of(covered: &[CoveredPath]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for c in covered {
            hasher.update(c.path.as_bytes());
            hasher.update([0]);
            hasher.update(c.blob.as_bytes());
            if c.executable {
                hasher.update(b"\x00100755");
            }
            hasher.update(b"\n");
        }
        hasher.finalize().into()
    }

    /// The digest whose SHA-256 is `sha256`.
    pub fn from_sha256(sha256: [u8; 32]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(sha256)))
    }

    /// The `sha256:<hex>` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tokens() {
        assert_eq!(
            command_paths(r#"./changes/scripts/pg_backup.sh "$OLD_DB" && ./bin/x --out=./tmp/"#),
            vec!["changes/scripts/pg_backup.sh", "bin/x", "tmp"]
        );
        assert_eq!(
            command_paths("cat ../secret a./b ./ echo"),
            Vec::<&str>::new()
        );
        assert_eq!(command_paths("sh -c './a.sh;./b.sh'"), vec!["a.sh", "b.sh"]);
    }

    #[test]
    fn digest_matches_the_documented_formula() {
        let mut covered = vec![
            CoveredPath {
                path: "changes/a.yaml".into(),
                blob: "ab".into(),
                executable: false,
            },
            CoveredPath {
                path: "run.sh".into(),
                blob: "cd".into(),
                executable: true,
            },
        ];
        let expected = hex::encode(Sha256::digest(
            b"changes/a.yaml\0ab\nrun.sh\0cd\x00100755\n",
        ));
        assert_eq!(Digest::of(&covered).as_str(), format!("sha256:{expected}"));
        // The same bytes, not executable: another digest.
        covered[1].executable = false;
        let plain = hex::encode(Sha256::digest(b"changes/a.yaml\0ab\nrun.sh\0cd\n"));
        assert_eq!(Digest::of(&covered).as_str(), format!("sha256:{plain}"));
    }
}
