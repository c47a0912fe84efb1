//! The compiler on configurations held in memory: what a valid one compiles to, and each
//! problem reported once, at its `file:line:col`, all of them together.

use std::path::{Path, PathBuf};

use crate::access::RuleAction;
use crate::config::{Issue, Issues, load_from_texts};
use crate::snapshot::Snapshot;

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// A `gateway.toml` with one upstream and base-sepolia as the default network; `extra` is
/// appended.
fn gateway(extra: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]

[upstreams.origin]
peers = ["127.0.0.1:1"]

[payment]
pay_to = "{PAY_TO}"
networks = ["base-sepolia"]
{extra}"#
    )
}

/// A `[passes]` section with a literal HMAC key.
const PASSES: &str = r#"
[passes]
signing_key = "k1"

[[passes.keys]]
id = "k1"
secret = "test-pass-key-0123456789abcdef-0123456789"
"#;

/// Compiles `config` as `gateway.toml` with rule files `(name under rules/, text)`.
fn compile(config: &str, rules: &[(&str, &str)]) -> Result<Snapshot, Issues> {
    let rules: Vec<(PathBuf, String)> = rules
        .iter()
        .map(|(name, text)| (Path::new("rules").join(name), (*text).to_owned()))
        .collect();
    load_from_texts(Path::new("gateway.toml"), config, &rules)
}

/// The issues of a configuration that must not compile.
fn issues(config: &str, rules: &[(&str, &str)]) -> Vec<Issue> {
    match compile(config, rules) {
        Ok(_) => panic!("compiled, expected issues"),
        Err(Issues(list)) => list,
    }
}

/// `file:line:col` of the first occurrence of `needle` in `text`.
fn at(file: &str, text: &str, needle: &str) -> String {
    let off = text.find(needle).expect("needle in text");
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    format!("{file}:{line}:{col}")
}

fn located(i: &Issue) -> String {
    format!("{}:{}:{}", i.file, i.line, i.col)
}

#[test]
fn a_minimal_config_with_a_free_and_a_priced_rule_compiles() {
    let rules = r#"[[rule]]
id = "health"
path = "/health"
action = "free"

[[rule]]
id = "article"
prefix = "/articles/"
methods = ["GET"]
price = "$0.01"
"#;
    let snap = compile(&gateway(""), &[("a.toml", rules)]).expect("valid");
    assert_eq!(snap.rules.len(), 2);
    let free = snap
        .rules
        .iter()
        .find(|r| r.id == "health")
        .expect("health");
    assert!(matches!(free.action, RuleAction::Free));
    let priced = snap
        .rules
        .iter()
        .find(|r| r.id == "article")
        .expect("article");
    let RuleAction::Pay(p) = &priced.action else {
        panic!("`article` is not priced: {:?}", priced.action);
    };
    assert_eq!(p.offers.len(), 1);
    let req = &p.offers[0].requirements;
    assert_eq!(req.network, "eip155:84532");
    assert_eq!(req.amount, "10000");
    assert_eq!(req.pay_to, PAY_TO);
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let config = gateway("").replace(
        "networks = [\"base-sepolia\"]",
        "networks = [\"base-sepolia\", \"nope-net\"]",
    );
    let rules = r#"[[rule]]
id = "elsewhere"
path = "/elsewhere"
action = "free"
upstream = "nowhere"
"#;
    let found = issues(&config, &[("a.toml", rules)]);
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            format!(
                "{}: payment.networks: unknown network `nope-net`",
                at("gateway.toml", &config, "\"nope-net\"")
            ),
            format!(
                "{}: rule.upstream: unknown upstream `nowhere`",
                at("rules/a.toml", rules, "\"nowhere\"")
            ),
        ]
    );
}

#[test]
fn a_rule_naming_an_unknown_upstream_is_reported() {
    let rules = r#"[[rule]]
id = "x"
path = "/x"
price = "$0.01"
upstream = "missing"
"#;
    let found = issues(&gateway(""), &[("a.toml", rules)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "rule.upstream");
    assert_eq!(found[0].message, "unknown upstream `missing`");
    assert_eq!(located(&found[0]), at("rules/a.toml", rules, "\"missing\""));
}

#[test]
fn a_duplicate_rule_id_names_the_first_location() {
    let a = r#"[[rule]]
id = "same"
path = "/one"
action = "free"
"#;
    let b = r#"[[rule]]
id = "same"
path = "/two"
action = "free"
"#;
    let found = issues(&gateway(""), &[("a.toml", a), ("b.toml", b)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "rule.id");
    assert_eq!(located(&found[0]), at("rules/b.toml", b, "\"same\""));
    assert_eq!(
        found[0].message,
        format!(
            "duplicate rule id `same`, first at {}",
            at("rules/a.toml", a, "\"same\"")
        )
    );
}

#[test]
fn accept_passes_from_must_name_a_rule_that_sells_passes() {
    let rules = r#"[[rule]]
id = "articles"
prefix = "/articles/"
price = "$0.01"

[[rule]]
id = "premium"
prefix = "/premium/"
price = "$0.05"
accept_passes_from = ["articles"]
"#;
    let found = issues(&gateway(PASSES), &[("a.toml", rules)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "rule.accept_passes_from");
    assert_eq!(
        found[0].message,
        "no rule `articles` that issues passes (`pass = { … }`)"
    );
    assert_eq!(
        located(&found[0]),
        at("rules/a.toml", rules, "\"articles\"]")
    );
}

#[test]
fn a_prefix_pass_wider_than_its_rule_is_refused() {
    let rules = r#"[[rule]]
id = "articles"
prefix = "/articles/"
price = "$0.01"
pass = { ttl = "1h", scope = "prefix", prefix = "/" }
"#;
    let found = issues(&gateway(PASSES), &[("a.toml", rules)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "rule.pass.prefix");
    assert!(
        found[0]
            .message
            .starts_with("must lie inside the rule's path `/articles/**`"),
        "{}",
        found[0].message
    );
    assert_eq!(located(&found[0]), at("rules/a.toml", rules, "\"/\" }"));
}

#[test]
fn a_missing_variable_in_a_facilitator_header_is_named_without_the_value() {
    let config = gateway(
        r#"
[[facilitators]]
name = "f"
url = "http://127.0.0.1:1"
headers = { Authorization = "Bearer s3cret-${X402_COMPILE_TEST_UNSET_TOKEN}" }
"#,
    );
    let found = issues(&config, &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    let line = found[0].to_string();
    assert_eq!(
        line,
        format!(
            "{}: facilitators.headers.Authorization: environment variable \
             `X402_COMPILE_TEST_UNSET_TOKEN` is not set",
            at("gateway.toml", &config, "\"Bearer")
        )
    );
    assert!(
        !line.contains("Bearer") && !line.contains("s3cret"),
        "{line}"
    );
}

#[test]
fn a_priced_rule_on_a_network_no_facilitator_lists_is_valid() {
    let config = gateway(
        r#"
[[facilitators]]
name = "mainnet-only"
url = "http://127.0.0.1:1"
networks = ["base"]
"#,
    );
    let rules = r#"[[rule]]
id = "article"
path = "/article"
methods = ["GET"]
price = "$0.01"
networks = ["base-sepolia"]
"#;
    let snap = compile(&config, &[("a.toml", rules)]).expect("valid");
    assert_eq!(snap.facilitators.len(), 1);
    assert_eq!(snap.facilitators[0].networks, ["eip155:8453"]);
    let RuleAction::Pay(p) = &snap.rules[0].action else {
        panic!("not priced");
    };
    assert_eq!(p.offers[0].requirements.network, "eip155:84532");
}

#[test]
fn a_redis_state_store_compiles_and_its_password_is_never_shown() {
    let config = gateway(
        r#"
[state]
backend = "redis"
url = "redis://gateway:s3cret-pw@127.0.0.1:6379/0"
cluster = ["redis://gateway:s3cret-pw@127.0.0.1:6380"]
key_prefix = "shop:"
command_timeout_ms = 100
replica_id = "edge-1"
"#,
    );
    let snap = compile(&config, &[]).expect("valid");
    let state = &snap.startup.state;
    assert_eq!(state.replica_id, "edge-1");
    let crate::state::Backend::Redis(r) = &state.backend else {
        panic!("not redis: {state:?}");
    };
    assert_eq!(r.key_prefix, "shop:");
    assert_eq!(r.command_timeout, std::time::Duration::from_millis(100));
    assert_eq!(r.cluster.len(), 1);
    let shown = state.public().to_string();
    assert!(shown.contains("\"backend\":\"redis\""), "{shown}");
    assert!(
        shown.contains("redis://127.0.0.1:6379/<redacted>"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!format!("{state:?}").contains("s3cret"));
}

#[test]
fn state_problems_are_reported_at_their_fields_without_the_url() {
    let config = gateway(
        r#"
[state]
backend = "redis"
url = "http://user:s3cret-pw@127.0.0.1:6379"
pool_size = 0
key_prefix = "a {b}"
"#,
    );
    let found = issues(&config, &[]);
    let fields: Vec<&str> = found.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        ["state.url", "state.pool_size", "state.key_prefix"],
        "{found:?}"
    );
    assert_eq!(located(&found[0]), at("gateway.toml", &config, "\"http://"));
    assert!(
        found.iter().all(|i| !i.message.contains("s3cret")),
        "{found:?}"
    );
    let unknown = issues(&gateway("\n[state]\nbackend = \"etcd\"\n"), &[]);
    assert_eq!(unknown[0].field, "state.backend");
    assert_eq!(
        unknown[0].message,
        "unknown backend `etcd`, expected `memory` or `redis`"
    );
}

#[test]
fn trusted_proxies_are_networks_or_addresses() {
    let good = gateway("").replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.10\", \"2001:db8::/32\"]\n",
    );
    let snap = compile(&good, &[]).expect("compiles");
    assert_eq!(snap.trusted_proxies.len(), 3);
    assert!(
        snap.trusted_proxies[1].contains(&"192.0.2.10".parse::<std::net::IpAddr>().expect("ip"))
    );
    let bad = gateway("").replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"lb.internal\"]\n",
    );
    let found = issues(&bad, &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "server.trusted_proxies");
    assert_eq!(
        located(&found[0]),
        at("gateway.toml", &bad, "\"lb.internal")
    );
}

#[test]
fn the_client_write_buffer_defaults_to_8_kib_and_is_bounded() {
    let snap = compile(&gateway(""), &[]).expect("compiles");
    assert_eq!(snap.startup.write_buffer_bytes, 8 * 1024);
    let off = gateway("").replace("[server]\n", "[server]\nwrite_buffer_bytes = 0\n");
    let snap = compile(&off, &[]).expect("compiles");
    assert_eq!(snap.startup.write_buffer_bytes, 0);
    let bad = gateway("").replace("[server]\n", "[server]\nwrite_buffer_bytes = 300000\n");
    let found = issues(&bad, &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "server.write_buffer_bytes");
    assert_eq!(located(&found[0]), at("gateway.toml", &bad, "300000"));
}

#[test]
fn a_channel_rule_says_how_deposits_are_made_and_a_bad_method_is_reported() {
    let authorizer = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";
    let rule = |id: &str, method: &str| {
        format!(
            "[[rule]]\nid = \"{id}\"\nprefix = \"/{id}/\"\nschemes = [\"batch-settlement\"]\nprice = \"$0.01\"\nreceiver_authorizer = \"{authorizer}\"\n{method}\n"
        )
    };
    let rules = format!(
        "{}\n{}",
        rule("plain", ""),
        rule("p2", "deposit_method = \"permit2\"")
    );
    let snap = compile(&gateway(""), &[("c.toml", &rules)]).expect("valid");
    let extra_of = |id: &str| {
        let r = snap.rules.iter().find(|r| r.id == id).expect("rule");
        let RuleAction::Pay(p) = &r.action else {
            panic!("`{id}` is not priced");
        };
        p.offers[0].requirements.extra.clone()
    };
    assert_eq!(extra_of("p2")["assetTransferMethod"], "permit2");
    // ERC-3009, the default, is what reference clients do when the offer names no method.
    assert!(!extra_of("plain").contains_key("assetTransferMethod"));

    let bad = rule("bad", "deposit_method = \"transfer\"");
    let found = issues(&gateway(""), &[("c.toml", &bad)]);
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [format!(
            "{}: rule.deposit_method: must be \"eip3009\" (a token with ERC-3009) or \"permit2\" (any ERC-20 the payer approved Permit2 for)",
            at("rules/c.toml", &bad, "\"transfer\"")
        )]
    );

    let short = gateway("channel_retire_seconds = 5");
    let found = issues(&short, &[("c.toml", &rules)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].field, "payment.channel_retire_seconds",
        "{found:?}"
    );

    let exact = "[[rule]]\nid = \"e\"\npath = \"/e\"\nschemes = [\"exact\"]\nprice = \"$0.01\"\ndeposit_method = \"permit2\"\n";
    let found = issues(&gateway(""), &[("c.toml", exact)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "rule.schemes", "{found:?}");
}

/// A body-metered `upto` rule stops its responses before the payer's permit ends, so its
/// `max_timeout_seconds` (what reference clients sign permits for) must leave room to deliver.
#[test]
fn a_body_metered_rule_needs_time_to_deliver_before_its_permits_end() {
    let rule = |timeout: &str| {
        format!(
            "[[rule]]\nid = \"stream\"\nprefix = \"/s/\"\nschemes = [\"upto\"]\nmax_price = \"$0.05\"\nmeter = \"seconds\"\nmeter_price = \"$0.001\"\nfacilitator_address = \"{PAY_TO}\"\n{timeout}\n"
        )
    };
    compile(&gateway(""), &[("m.toml", &rule(""))]).expect("the default timeout is long enough");
    compile(
        &gateway(""),
        &[("m.toml", &rule("max_timeout_seconds = 25"))],
    )
    .expect("just enough");
    let short = rule("max_timeout_seconds = 24");
    let found = issues(&gateway(""), &[("m.toml", &short)]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "rule.max_timeout_seconds", "{found:?}");
    assert_eq!(located(&found[0]), at("rules/m.toml", &short, "24\n"));
    // The origin's own statement is read with the head: no delivery to leave room for.
    let origin = short.replace("meter = \"seconds\"\nmeter_price = \"$0.001\"\n", "");
    compile(&gateway(""), &[("m.toml", &origin)]).expect("an origin-metered rule");
}
