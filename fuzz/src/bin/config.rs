//! `cargo afl fuzz -i corpus/config -o out/config target/debug/config` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::config(data));
}
