//! `cargo afl fuzz -i corpus/path -o out/path target/debug/path` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::path(data));
}
