//! `cargo afl fuzz -i corpus/notify -o out/notify target/debug/notify` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::notify(data));
}
