//! Route policy cost per request (issue 13): path normalization plus route matching with
//! 50 routes (prefix, exact and regex mixed), for a path that matches the last route, one
//! that matches none, and one that needs normalizing first.
//!
//! `cargo bench --bench routes`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jwtgate::config::Config;
use jwtgate::metrics::Metrics;
use jwtgate::policy::Policy;

/// 50 routes: 20 prefixes, 20 exact paths, 10 regexes; the last one is `/zz/…`.
fn config() -> Config {
    let mut text = String::from(
        "[upstream]\nurl = \"http://127.0.0.1:8081\"\n[[issuers]]\nname = \"km\"\n\
         issuer = \"https://km.example.com/oauth2/token\"\njwks_uri = \"http://127.0.0.1:1/jwks\"\n\
         audiences = [\"api://orders\"]\n",
    );
    for i in 0..20 {
        text.push_str(&format!(
            "[[routes]]\nname = \"p{i}\"\npath_prefix = \"/service-{i}/v1\"\nmethods = [\"GET\", \"POST\"]\nscopes_all = [\"s{i}\"]\n"
        ));
        text.push_str(&format!(
            "[[routes]]\nname = \"e{i}\"\npath_exact = \"/exact-{i}/status\"\nauth = \"public\"\n"
        ));
    }
    for i in 0..9 {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npath_regex = \"/items-{i}/[0-9]+/details\"\nmethods = [\"PUT\"]\n"
        ));
    }
    text.push_str("[[routes]]\nname = \"last\"\npath_regex = \"/zz/[a-z]+\"\n");
    Config::from_toml_str(&text, &|_| None).unwrap()
}

fn routing(c: &mut Criterion) {
    let config = config();
    assert_eq!(config.routes.len(), 50);
    let policy = Policy::new(&config, &Metrics::new());
    let mut g = c.benchmark_group("route_50");
    for (name, method, path) in [
        ("last_route", "GET", "/zz/orders"),
        ("no_route", "GET", "/api/orders/42/lines"),
        ("needs_normalizing", "GET", "/service-7/v1/../v1/%61bc//x"),
        ("first_route", "GET", "/service-0/v1/orders"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let n = policy.normalize(black_box(path)).unwrap();
                black_box(policy.route(black_box(method), &n.matching))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
