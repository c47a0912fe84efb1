//! Rule matching and snapshot building at 10, 1 000 and 10 000 rules, through the public API.
//!
//! The rule set is a realistic mix: exact paths with a method, prefixes, globs with `**` and
//! `*.ext`, host globs, and exact-host tenants that all share one path prefix, plus a catch-all.
//! Requests cycle through hits on every kind and misses that fall to the catch-all.
//!
//! Times are CPU time of the benchmarking thread (see support/cpu_time.rs).
//!
//! Targets (issue 2): match median under 1 µs at 10 000 rules; building a 10 000-rule
//! snapshot under 200 ms.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks: a failed set-up step ends the run"
)]

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::CpuTime;
use pingora::http::RequestHeader;
use x402_gateway::router::{HostPattern, Methods, PathPattern, Route, Router};

/// One generated rule, in the shape both the router and the rules files need.
struct Spec {
    host: Option<String>,
    methods: Option<&'static str>,
    path: Option<String>,
    prefix: Option<String>,
    priced: bool,
}

/// `n` rules: five kinds in turn, then a catch-all. Nothing conflicts.
fn specs(n: usize) -> Vec<Spec> {
    let mut out = Vec::with_capacity(n);
    for k in 0..n.saturating_sub(1) {
        out.push(match k % 5 {
            0 => Spec {
                host: None,
                methods: Some("GET"),
                path: Some(format!("/api/v1/svc{k}/items")),
                prefix: None,
                priced: true,
            },
            1 => Spec {
                host: None,
                methods: None,
                path: None,
                prefix: Some(format!("/docs/d{k}/")),
                priced: false,
            },
            2 => Spec {
                host: None,
                methods: None,
                path: Some(format!("/img/g{k}/**/*.jpg")),
                prefix: None,
                priced: true,
            },
            3 => Spec {
                host: Some(format!("*.cdn{k}.example.com")),
                methods: None,
                path: Some(format!("/files/f{k}/*.pdf")),
                prefix: None,
                priced: true,
            },
            _ => Spec {
                host: Some(format!("t{k}.example.com")),
                methods: None,
                path: None,
                prefix: Some("/account/".into()),
                priced: true,
            },
        });
    }
    out.push(Spec {
        host: None,
        methods: None,
        path: None,
        prefix: Some("/".into()),
        priced: false,
    });
    out
}

fn route_of(s: &Spec) -> Route {
    let path = match (&s.path, &s.prefix) {
        (Some(p), _) => PathPattern::glob(p, false),
        (None, Some(p)) => PathPattern::prefix(p, false),
        (None, None) => PathPattern::glob("/**", false),
    }
    .expect("pattern");
    Route {
        host: s
            .host
            .as_deref()
            .map_or(HostPattern::Any, |h| HostPattern::parse(h).expect("host")),
        methods: Methods(s.methods.and_then(Methods::parse).unwrap_or(0)),
        path,
    }
}

/// (host, method, path) requests cycling over every rule kind and a miss.
fn requests(n: usize) -> Vec<(String, &'static str, String)> {
    let rules = n.saturating_sub(1).max(1);
    // Pick rule numbers spread over the whole set, deterministically.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut pick = |kind: usize| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = (x >> 33) as usize % rules;
        k - k % 5 + kind
    };
    let mut out = Vec::new();
    for _ in 0..32 {
        let k = pick(0);
        out.push(("example.com".into(), "GET", format!("/api/v1/svc{k}/items")));
        let k = pick(1);
        out.push((
            "example.com".into(),
            "GET",
            format!("/docs/d{k}/guide/intro"),
        ));
        let k = pick(2);
        out.push((
            "example.com".into(),
            "GET",
            format!("/img/g{k}/2024/05/cat.jpg"),
        ));
        let k = pick(3);
        out.push((
            format!("eu.cdn{k}.example.com"),
            "GET",
            format!("/files/f{k}/report.pdf"),
        ));
        let k = pick(4);
        out.push((
            format!("t{k}.example.com"),
            "POST",
            "/account/settings".into(),
        ));
        out.push(("example.com".into(), "GET", "/about/team".into()));
    }
    out
}

fn bench_match(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("match");
    g.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000, 10_000] {
        let (router, conflicts) = Router::build(specs(n).iter().map(route_of).collect());
        assert!(
            conflicts.is_empty(),
            "generated rules conflict: {conflicts:?}"
        );
        let reqs: Vec<_> = requests(n)
            .into_iter()
            .map(|(h, m, p)| (h, Methods::bit(m), p))
            .collect();
        // Every request finds a rule (the catch-all at worst).
        for (h, m, p) in &reqs {
            assert!(router.find(h, *m, p).is_some(), "{h} {p}");
        }
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("router_find", n), &n, |b, _| {
            b.iter(|| {
                let (h, m, p) = &reqs[i % reqs.len()];
                i += 1;
                black_box(router.find(black_box(h), *m, black_box(p)))
            })
        });
    }
    g.finish();
}

/// Writes a config folder with `n` rules split over files of 1 000.
fn write_config(dir: &Path, n: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[admin]
enabled = false

[upstreams.origin]
peers = ["127.0.0.1:9"]

[payment]
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
networks = ["base-sepolia"]

[reload]
watch = false

[ledger]
path = ""
"#,
    )
    .expect("write config");
    for (f, chunk) in specs(n).chunks(1000).enumerate() {
        let mut text = String::new();
        for (j, s) in chunk.iter().enumerate() {
            text.push_str(&format!("[[rule]]\nid = \"r{f}-{j}\"\n"));
            if let Some(h) = &s.host {
                text.push_str(&format!("host = \"{h}\"\n"));
            }
            if let Some(m) = s.methods {
                text.push_str(&format!("methods = [\"{m}\"]\n"));
            }
            if let Some(p) = &s.path {
                text.push_str(&format!("path = \"{p}\"\n"));
            }
            if let Some(p) = &s.prefix {
                text.push_str(&format!("prefix = \"{p}\"\n"));
            }
            if s.priced {
                text.push_str("price = \"$0.01\"\ndescription = \"A priced thing\"\n\n");
            } else {
                text.push_str("action = \"free\"\n\n");
            }
        }
        std::fs::write(dir.join("rules").join(format!("{f:03}.toml")), text).expect("write");
    }
    cfg
}

fn bench_snapshot(c: &mut Criterion<CpuTime>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), 10_000);
    let snap = x402_gateway::config::load(&cfg, 1, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.rules.len(), 10_000);

    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    // The router alone: patterns already compiled, no I/O.
    let routes: Vec<Route> = specs(10_000).iter().map(route_of).collect();
    g.bench_function("router_build/10000", |b| {
        b.iter(|| black_box(Router::build(black_box(routes.clone()))))
    });
    // Everything a reload does: read 10 files, parse TOML, validate, compile prices, build
    // the router (with conflict detection) and the upstream pools.
    g.bench_function("config_load/10000", |b| {
        b.iter(|| black_box(x402_gateway::config::load(&cfg, 1, None).is_ok()))
    });
    g.finish();

    // Matching through the snapshot, and the whole per-request routing step (Host
    // normalization, path canonicalization, match key, rule lookup) on a parsed request.
    let reqs = requests(10_000);
    let headers: Vec<RequestHeader> = reqs
        .iter()
        .map(|(h, m, p)| {
            let mut r = RequestHeader::build(*m, p.as_bytes(), None).expect("request");
            r.insert_header("host", h.as_str()).expect("host");
            r
        })
        .collect();
    let mut g = c.benchmark_group("match");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("snapshot_route/10000", |b| {
        b.iter(|| {
            let (h, m, p) = &reqs[i % reqs.len()];
            i += 1;
            black_box(snap.route(black_box(h), m, black_box(p)))
        })
    });
    let mut i = 0;
    g.bench_function("request_route/10000", |b| {
        b.iter(|| {
            let r = &headers[i % headers.len()];
            i += 1;
            black_box(x402_gateway::proxy::request::route(&snap, black_box(r)).is_ok())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = cpu_time::criterion();
    targets = bench_match, bench_snapshot
}
criterion_main!(benches);
