//! `gateway.toml.example` claims to list every option: every field of the structs that
//! `gateway.toml` is read into appears in it (as a key, commented out or not, or as a table
//! name). Read from the sources, so a new option without an example line fails here.

use crate::support::repo;

/// The `gateway.toml` sections that `access_file.rs` holds (the rest of it is rules files).
const ACCESS_SECTIONS: &[&str] = &[
    "WebBotAuthSection",
    "AgentDef",
    "PassesSection",
    "PassKeyDef",
    "PaywallSection",
];

/// `(struct, field)` for every `pub` field of the `pub struct`s in `src` (of `only`, if given).
fn fields(src: &str, only: Option<&[&str]>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in src.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let wanted = only.is_none_or(|o| o.contains(&name.as_str()));
            current = (t.ends_with('{') && wanted).then_some(name);
        } else if line == "}" {
            current = None;
        } else if let (Some(s), Some(rest)) = (&current, t.strip_prefix("pub "))
            && let Some((field, _)) = rest.split_once(':')
        {
            out.push((s.clone(), field.trim().to_owned()));
        }
    }
    out
}

/// Whether `name` is a key (`name =`, commented out or not, inline tables too) or a segment of
/// a table name in `example`.
fn listed(example: &str, name: &str) -> bool {
    example.lines().any(|line| {
        let l = line.trim_start_matches(['#', ' ']);
        if l.starts_with('[') {
            let header = l.split(']').next().unwrap_or("").trim_start_matches('[');
            return header.split('.').any(|s| s.trim() == name);
        }
        l.match_indices(name).any(|(i, _)| {
            let before = l[..i].chars().next_back();
            let after = l[i + name.len()..].trim_start();
            before.is_none_or(|c| c == ' ' || c == '{' || c == ',') && after.starts_with('=')
        })
    })
}

#[test]
fn every_gateway_toml_option_is_in_the_example() {
    let root = repo();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let example = read("gateway.toml.example");
    let mut all = fields(&read("src/config/file.rs"), None);
    all.extend(fields(&read("src/config/state_file.rs"), None));
    all.extend(fields(
        &read("src/config/access_file.rs"),
        Some(ACCESS_SECTIONS),
    ));
    assert!(
        all.len() > 100,
        "the parser found the structs: {}",
        all.len()
    );
    let missing: Vec<String> = all
        .iter()
        .filter(|(_, f)| !listed(&example, f))
        .map(|(s, f)| format!("{s}.{f}"))
        .collect();
    assert!(
        missing.is_empty(),
        "options missing from gateway.toml.example: {missing:?}"
    );
    // The check itself can fail.
    assert!(!listed(&example, "no_such_option_anywhere"));
    assert!(listed("# debounce_ms = 200\n", "debounce_ms"));
    assert!(listed("[upstreams.origin.health_check]\n", "health_check"));
    assert!(!listed("# max_debounce_ms = 2\n", "debounce_ms"));
}
