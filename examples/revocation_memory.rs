//! Memory per revocation record, peak during updates included.
//!
//! `cargo run --release --example revocation_memory -- 1000000` prints RSS before and after
//! loading N jti records (in pages of 10 k, or the second argument, as feed pages arrive), the peak (VmHWM) while
//! loading, and the peak while 100 more batches of 1 000 records are pushed on top.

use jwtgate::revocation::record::Target;
use jwtgate::revocation::{Record, RevocationList};

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
        * 1024
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let page: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let before = status("VmRSS:");
    let list = RevocationList::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<Record> = (i..(i + page).min(n))
            .map(|k| Record::Id {
                target: Target::Jti,
                id: format!("{k:08x}-7c1e-4b8a-9f0d-3e5a1c2b4d6f"),
                exp: 2_000_000_000,
            })
            .collect();
        list.apply(&batch);
        i += batch.len();
    }
    let loaded = status("VmRSS:");
    let table = list.table_bytes();
    let peak_load = status("VmHWM:");
    for b in 0..100 {
        let batch: Vec<Record> = (0..1000)
            .map(|k| Record::Id {
                target: Target::Jti,
                id: format!("update-{b}-{k}"),
                exp: 2_000_000_000,
            })
            .collect();
        list.apply(&batch);
    }
    let after = status("VmRSS:");
    let peak = status("VmHWM:");
    let per = |bytes: u64| bytes as f64 / n as f64;
    println!(
        "records={n} page={page} held={} table_bytes_per_record={:.1}B rss_per_record={:.1}B peak_while_loading_per_record={:.1}B after_100k_updates_rss_per_record={:.1}B peak_overall_per_record={:.1}B",
        list.len(),
        per(table as u64),
        per(loaded - before),
        per(peak_load - before),
        per(after - before),
        per(peak - before),
    );
}
