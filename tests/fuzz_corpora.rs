//! Every file of every fuzz corpus (`fuzz/corpus/<target>/`, seeds and the inputs the
//! fuzzers kept, crashes included once fixed) through the same entry points the fuzzers
//! drive: none may panic. Runs in CI in well under the 2-minute budget.

use std::path::Path;

#[test]
fn every_corpus_input_is_handled_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, target) in jwtgate::fuzz_targets::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
            n += 1;
        }
        assert!(n > 0, "{name}: empty corpus");
        total += n;
    }
    println!("{total} corpus inputs replayed");
}

/// The snapshot seed is a real version-2 file: the decoder takes it.
#[test]
fn the_snapshot_seed_is_a_valid_snapshot() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/snapshot/v2.snapshot");
    let restored = jwtgate::revocation::snapshot::decode(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(restored.list.len(), 3);
    assert_eq!(restored.cursor.as_deref(), Some("c-42"));
}
