//! Revocation list benchmarks (issue 3 §9): lookup with 0 / 1 M / 10 M records, one push
//! applied to a 1 M list (push → enforced), snapshot write and restore of 1 M records.
//!
//! `cargo bench --bench revocation`; memory per record: `cargo run --release --example
//! revocation_memory -- 1000000`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jwtgate::revocation::record::Target;
use jwtgate::revocation::{Facts, Record, RevocationList, snapshot};

const BOUND: jwtgate::revocation::LifetimeBound = jwtgate::revocation::LifetimeBound {
    max: 86400,
    since: 0,
    earlier: None,
};

/// A list holding `n` jti records (built in batches, as feed pages would arrive).
fn list_with(n: usize) -> RevocationList {
    let list = RevocationList::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<Record> = (i..(i + 100_000).min(n))
            .map(|k| Record::Id {
                target: Target::Jti,
                id: format!("{k:08x}-7c1e-4b8a-9f0d-3e5a1c2b4d6f"),
                exp: 2_000_000_000,
            })
            .collect();
        list.apply(&batch);
        i += batch.len();
    }
    list
}

fn facts(jti: &str) -> Facts<'_> {
    Facts {
        iss: "https://km.example.com:9443/oauth2/token",
        wso2: false,
        jti: Some(jti),
        sub: Some("2f3c1b9e-user-uuid"),
        client: Some("consumer-key-1"),
        entity_id: None,
        signature: "",
        signature_twin: None,
        iat: Some(1_700_000_000),
    }
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("revocation_lookup");
    for n in [0usize, 1_000_000, 10_000_000] {
        let list = list_with(n);
        let miss = "ffffffff-0000-4000-8000-000000000000";
        g.bench_with_input(BenchmarkId::new("token_not_revoked", n), &n, |b, _| {
            b.iter(|| black_box(list.is_revoked(black_box(&facts(miss)))))
        });
        let fps = list.fingerprints(&facts(miss));
        g.bench_with_input(
            BenchmarkId::new("token_not_revoked_cached_fingerprints", n),
            &n,
            |b, _| b.iter(|| black_box(list.is_revoked_fps(black_box(&fps), Some(1_700_000_000)))),
        );
        if n > 0 {
            let hit = format!("{:08x}-7c1e-4b8a-9f0d-3e5a1c2b4d6f", n / 2);
            g.bench_with_input(BenchmarkId::new("token_revoked_by_jti", n), &n, |b, _| {
                b.iter(|| black_box(list.is_revoked(black_box(&facts(&hit)))))
            });
        }
    }
    g.finish();
}

fn push(c: &mut Criterion) {
    let list = list_with(1_000_000);
    let mut k = 0u64;
    c.bench_function("revocation_push_one_into_1M", |b| {
        b.iter(|| {
            k += 1;
            list.apply(&[Record::Id {
                target: Target::Jti,
                id: format!("push-{k}"),
                exp: 2_000_000_000,
            }])
        })
    });
}

fn snapshots(c: &mut Criterion) {
    let list = list_with(1_000_000);
    let dir = std::env::temp_dir().join(format!("jwtgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("revocations.snapshot");
    let mut g = c.benchmark_group("revocation_snapshot_1M");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("encode_and_write", |b| {
        b.iter(|| snapshot::write(&path, &snapshot::encode(&list, Some("cursor"), &BOUND)).unwrap())
    });
    g.bench_function("restore", |b| {
        b.iter(|| black_box(snapshot::load(&path).unwrap().unwrap().list.len()))
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, lookup, push, snapshots);
criterion_main!(benches);
