//! The shape of `src/` (ARCHITECTURE.md): no import cycle between top-level modules, and the
//! domains (protocol, schemes, access, payment, facilitators, state) never reach up into the
//! configuration, the snapshot, the proxy or the services. Read from the sources, so a new
//! `use` that breaks a rule fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::repo;

/// Top-level modules that must not import the ones listed with them.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "x402",
        &[
            "schemes",
            "access",
            "payment",
            "facilitator",
            "state",
            "config",
            "snapshot",
            "proxy",
        ],
    ),
    (
        "schemes",
        &[
            "access",
            "payment",
            "facilitator",
            "state",
            "config",
            "snapshot",
            "proxy",
        ],
    ),
    (
        "state",
        &[
            "access",
            "payment",
            "facilitator",
            "config",
            "snapshot",
            "proxy",
        ],
    ),
    (
        "facilitator",
        &["access", "payment", "config", "snapshot", "proxy"],
    ),
    ("payment", &["access", "config", "snapshot", "proxy"]),
    ("access", &["config", "snapshot", "proxy"]),
    ("snapshot", &["config", "proxy"]),
    ("config", &["proxy", "server", "admin", "reload"]),
];

/// `module -> modules it uses`, from every `crate::<module>` path outside comments and test
/// modules.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = repo().join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            // `tests.rs` files are test modules of their folder.
            if path.extension().is_none_or(|e| e != "rs")
                || path.file_name().is_some_and(|n| n == "tests.rs")
            {
                continue;
            }
            let module = top_module(&src, &path);
            let text = std::fs::read_to_string(&path).expect("read");
            // Test modules written inline are left out; a `#[cfg(test)] mod tests;` line is
            // only a declaration, and the code after it counts.
            let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                let mut rest = line;
                while let Some(i) = rest.find("crate::") {
                    rest = &rest[i + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        edges.entry(module.clone()).or_default().insert(name);
                    }
                }
            }
            edges.entry(module).or_default();
        }
    }
    edges
}

fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or("");
    first.trim_end_matches(".rs").to_owned()
}

/// One cycle, if the graph has any.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle_and_domains_never_reach_up() {
    let edges = graph();
    for m in [
        "x402",
        "schemes",
        "access",
        "payment",
        "facilitator",
        "proxy",
        "config",
    ] {
        assert!(edges.contains_key(m), "module {m} not found in src/");
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
    let mut wrong = Vec::new();
    for (module, banned) in FORBIDDEN {
        for used in edges.get(*module).into_iter().flatten() {
            if banned.contains(&used.as_str()) {
                wrong.push(format!("{module} imports {used}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering: {wrong:?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    edges.entry("c".into()).or_default();
    assert_eq!(find_cycle(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
