//! `cargo afl fuzz -i corpus/native_feed -o out/native_feed target/debug/native_feed` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::native_feed(data));
}
