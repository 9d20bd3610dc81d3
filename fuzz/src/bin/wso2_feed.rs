//! `cargo afl fuzz -i corpus/wso2_feed -o out/wso2_feed target/debug/wso2_feed` (see fuzz/README.md).
fn main() {
    afl::fuzz!(|data: &[u8]| jwtgate::fuzz_targets::wso2_feed(data));
}
