//! `cargo afl fuzz -i corpus/jwks -o out/jwks target/debug/jwks` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::jwks(data));
}
