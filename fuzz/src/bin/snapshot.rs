//! `cargo afl fuzz -i corpus/snapshot -o out/snapshot target/debug/snapshot` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::snapshot_bytes(data));
}
