//! `cargo afl fuzz -i corpus/push -o out/push target/debug/push` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::push(data));
}
