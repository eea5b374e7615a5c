//! `validate` over generated repositories of change sets with 4 steps each.
//!
//! In-process timing with criterion for 1,000 and 10,000 change sets, then,
//! in the same run, the `changegate validate` process against
//! `check-jsonschema` (when on PATH) validating the same files against the
//! `changegate schema change-set` output. See README.md, "Benchmarks".

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use changegate::git::ChangeRepo;
use criterion::{criterion_group, BenchmarkId, Criterion};
use support::generate;

fn sizes() -> Vec<usize> {
    std::env::var("CHANGEGATE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000])
}

fn validate_in_process(dir: &Path) -> usize {
    let repo = ChangeRepo::open(dir).unwrap();
    let model = repo.at("HEAD").unwrap().load_model().unwrap();
    assert!(
        model.is_valid(),
        "{:?}",
        &model.diagnostics[..model.diagnostics.len().min(3)]
    );
    model.changes.len()
}

fn bench_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for n in sizes() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), n);
        assert_eq!(validate_in_process(dir.path()), n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &dir, |b, dir| {
            b.iter(|| validate_in_process(dir.path()))
        });
    }
    group.finish();
}

fn median_of(runs: usize, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        if !f() {
            return None;
        }
        times.push(start.elapsed());
    }
    times.sort();
    Some(times[times.len() / 2])
}

/// Both validators as whole processes over the same files, medians of 5.
fn compare_with_check_jsonschema() {
    let checker = std::env::var("CHECK_JSONSCHEMA").unwrap_or_else(|_| "check-jsonschema".into());
    if Command::new(&checker).arg("--version").output().is_err() {
        println!("check-jsonschema not found; `pip install check-jsonschema` to compare (README.md, Benchmarks)");
        return;
    }
    let n = 10_000;
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), n);
    let schema = dir.path().join("change-set.schema.json");
    let out = Command::new(env!("CARGO_BIN_EXE_changegate"))
        .args(["schema", "change-set"])
        .output()
        .unwrap();
    std::fs::write(&schema, out.stdout).unwrap();
    let files: Vec<String> = (0..n)
        .map(|i| format!("changes/change-{i:06}.yaml"))
        .collect();

    let ours = median_of(5, || {
        Command::new(env!("CARGO_BIN_EXE_changegate"))
            .args(["validate", "--repo"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let theirs = median_of(5, || {
        Command::new(&checker)
            .arg("--schemafile")
            .arg(&schema)
            .args(&files)
            .current_dir(dir.path())
            .output()
            .is_ok_and(|o| o.status.success())
    });
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => println!(
            "validate {n} change sets, process medians of 5: changegate {:.3}s, check-jsonschema {:.3}s, ratio {:.1}x",
            ours.as_secs_f64(),
            theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        ),
        _ => println!("a validator failed on the generated files; no comparison"),
    }
}

criterion_group!(benches, bench_validate);

fn main() {
    benches();
    compare_with_check_jsonschema();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
