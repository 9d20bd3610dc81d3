//! The code's shape, held to its documentation: the request phases `lib.rs` lists are the
//! phases `Proxy::prepare` runs, in the same order.

fn read(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn documented_phases_are_the_phases_prepare_runs() {
    let lib = read("src/lib.rs");
    let start = lib
        .find("<!-- phases -->")
        .expect("phase list start marker");
    let end = lib.find("<!-- /phases -->").expect("phase list end marker");
    let documented: Vec<String> = lib[start..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches("//!").trim();
            let item = l.split_once(". `")?.1;
            Some(item.split('`').next()?.to_owned())
        })
        .collect();

    let proxy = read("src/proxy/mod.rs");
    let body_start = proxy.find("pub async fn prepare<").expect("prepare");
    let body = &proxy[body_start..];
    let body = &body[..body.find("\n    }\n").expect("end of prepare")];
    let run: Vec<String> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("// phase: "))
        .map(|p| p.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();

    assert!(documented.len() >= 6, "{documented:?}");
    assert_eq!(documented, run, "lib.rs phase list vs Proxy::prepare");
}
