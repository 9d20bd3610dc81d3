//! `cargo afl fuzz -i corpus/token -o out/token target/debug/token` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::token(data));
}
