//! The command line: `check` reports every problem as `file:line:col: field: message` and
//! exits 1; `explain` shows the rule and the exact 402; `--version`.

use std::path::Path;

use super::*;

/// Writes a gateway folder (gateway.toml + rules/) without starting anything.
fn folder(config: &str, rules: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    for (name, body) in rules {
        std::fs::write(dir.path().join("rules").join(name), body).expect("write");
    }
    dir
}

fn check(dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let cfg = dir.join("gateway.toml");
    gateway_cli(&["check", "-c", cfg.to_str().expect("utf-8 path")], env)
}

/// One expected problem: the file, the text it points at, the field, part of the message.
struct Want<'a> {
    file: &'a str,
    at: &'a str,
    field: &'a str,
    message: &'a str,
}

#[test]
fn check_reports_every_problem_in_every_file_with_its_location() {
    let gateway = r#"[server]
listen = ["127.0.0.1:0"]
threads = 1

[admin]
listen = "127.0.0.1:0"

[upstreams.origin]
peers = ["127.0.0.1:9"]
read_timeout = 5000

[payment]
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
networks = ["base-sepolia", "nope-net"]

[[facilitators]]
name = "f"
url = "http://127.0.0.1:1"
headers = { Authorization = "Bearer ${X402_CHECK_MISSING_TOKEN}" }

[reload]
debounse_ms = 5
"#;
    let a = r#"[[rule]]
id = "tiny"
path = "/tiny"
price = "$0.0000001"

[[rule]]
id = "elsewhere"
path = "/elsewhere"
action = "free"
upstream = "nowhere"
"#;
    let b = r#"[[rule]]
id = "badglob"
path = "/a/**b"
price = "$0.01"

[[rule]]
id = "typo"
path = "/typo"
pirce = "$1"

[[rule]]
id = "verbs"
path = "/verbs"
methods = ["GET", "FETCH"]
price = "$0.01"

[[rule]]
id = "ok"
path = "/ok"
price = { amount = "10000", asset = "usdc" }
"#;
    let c = "[[rule]]\nid = \"broken\"\npath = \"/x\nprice = 1\n";
    let dir = folder(
        gateway,
        &[("10-a.toml", a), ("20-b.toml", b), ("30-c.toml", c)],
    );
    let (code, stdout, report) = check(dir.path(), &[]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {report}");

    let d = dir.path();
    let path_of = |f: &str| {
        if f == "gateway.toml" {
            d.join(f)
        } else {
            d.join("rules").join(f)
        }
    };
    let text_of = |f: &str| std::fs::read_to_string(path_of(f)).expect("read");
    let wants = [
        Want {
            file: "gateway.toml",
            at: "read_timeout = 5000",
            field: "upstreams.origin",
            message: "unknown field `read_timeout`",
        },
        Want {
            file: "gateway.toml",
            at: "\"nope-net\"",
            field: "payment.networks",
            message: "unknown network `nope-net`",
        },
        Want {
            file: "gateway.toml",
            at: "\"Bearer ${X402_CHECK_MISSING_TOKEN}\"",
            field: "facilitators.headers.Authorization",
            message: "environment variable `X402_CHECK_MISSING_TOKEN` is not set",
        },
        Want {
            file: "gateway.toml",
            at: "debounse_ms",
            field: "reload",
            message: "unknown field `debounse_ms`",
        },
        Want {
            file: "10-a.toml",
            at: "\"$0.0000001\"",
            field: "rule.price",
            message: "not a whole number of atomic units",
        },
        Want {
            file: "10-a.toml",
            at: "\"nowhere\"",
            field: "rule.upstream",
            message: "unknown upstream `nowhere`",
        },
        Want {
            file: "20-b.toml",
            at: "\"/a/**b\"",
            field: "rule.path",
            message: "'**' must be a whole path segment",
        },
        Want {
            file: "20-b.toml",
            at: "pirce",
            field: "rule[1]",
            message: "unknown field `pirce`",
        },
        Want {
            file: "20-b.toml",
            at: "[\"GET\", \"FETCH\"]",
            field: "rule.methods",
            message: "unknown method `FETCH`",
        },
        Want {
            file: "30-c.toml",
            at: "\nprice",
            field: "syntax",
            message: "",
        },
    ];
    let lines: Vec<&str> = report.lines().collect();
    for w in &wants {
        let mut location = loc(&text_of(w.file), w.at);
        if w.at == "\nprice" {
            // The unterminated string is reported where the line ends.
            let text = text_of(w.file);
            let line = text
                .lines()
                .position(|l| l.starts_with("path"))
                .expect("line")
                + 1;
            location = format!("{line}:{}", "path = \"/x".len() + 1);
        }
        let prefix = format!("{}:{location}: {}: ", path_of(w.file).display(), w.field);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(w.message)),
            "missing `{prefix}…{}` in the report:\n{report}",
            w.message
        );
    }
    // Nothing else: no follow-on noise about sections that were present.
    let problems: Vec<&&str> = lines.iter().filter(|l| l.contains(": ")).collect();
    assert_eq!(
        problems.len(),
        wants.len(),
        "unexpected problems in the report:\n{report}"
    );
    assert!(
        report
            .trim_end()
            .ends_with(&format!("{} problem(s)", wants.len())),
        "{report}"
    );

    // The value of a variable that is set is never printed.
    let (code, _, report) = check(
        dir.path(),
        &[("X402_CHECK_MISSING_TOKEN", "tok-SECRET-123")],
    );
    assert_eq!(code, 1);
    assert!(!report.contains("X402_CHECK_MISSING_TOKEN"), "{report}");
    assert!(!report.contains("tok-SECRET-123"), "{report}");
}

#[test]
fn equally_specific_overlapping_rules_are_a_conflict_naming_both() {
    let one = r#"[[rule]]
id = "free-stuff"
path = "/c/a*"
action = "free"
"#;
    let two = r#"# another file

[[rule]]
id = "paid-stuff"
path = "/c/*b"
price = "$0.01"
"#;
    let cfg = Cfg::new("127.0.0.1:9").render();
    let dir = folder(&cfg, &[("10-one.toml", one), ("20-two.toml", two)]);
    let (code, _, report) = check(dir.path(), &[]);
    assert_eq!(code, 1, "{report}");
    let r = dir.path().join("rules");
    let a = format!(
        "{}:{}",
        r.join("10-one.toml").display(),
        loc(one, "\"free-stuff\"")
    );
    let b = format!(
        "{}:{}",
        r.join("20-two.toml").display(),
        loc(two, "\"paid-stuff\"")
    );
    let line = report
        .lines()
        .find(|l| l.contains("equally specific"))
        .unwrap_or_else(|| panic!("no conflict reported:\n{report}"));
    assert!(line.contains(&a) && line.contains(&b), "{line}");
    assert!(
        line.contains("free-stuff") && line.contains("paid-stuff"),
        "{line}"
    );

    // Different methods, hosts or literal text do not conflict.
    let fine = r#"[[rule]]
id = "get"
path = "/c/a*"
methods = ["GET"]
price = "$0.01"

[[rule]]
id = "post"
path = "/c/*b"
methods = ["POST"]
price = "$0.02"

[[rule]]
id = "host-a"
host = "a.test"
path = "/h/*"
price = "$0.01"

[[rule]]
id = "host-b"
host = "b.test"
path = "/h/*"
price = "$0.01"

[[rule]]
id = "pdf"
path = "/f/*.pdf"
price = "$0.01"

[[rule]]
id = "jpg"
path = "/f/*.jpg"
action = "free"
"#;
    let dir = folder(&cfg, &[("rules.toml", fine)]);
    let (code, out, err) = check(dir.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: 6 rules (5 priced)"), "{out}");
}

#[test]
fn check_accepts_the_shipped_example() {
    let example = repo().join("gateway.toml.example");
    let (code, out, err) =
        gateway_cli(&["check", "-c", example.to_str().expect("utf-8 path")], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
    // Its pay_to is an example: `check` says so, where it is written.
    let text = std::fs::read_to_string(&example).expect("example");
    let line = text
        .lines()
        .position(|l| l.starts_with("pay_to = \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\""))
        .expect("the example's pay_to")
        + 1;
    assert!(
        out.contains(&format!(
            "warning: {}:{line}:10: payment.pay_to: `0x209693Bc6afc0C5328bA36FaF03C514EF312287C` is the address of the shipped examples",
            example.display()
        )),
        "{out}"
    );
}

/// The container image's configuration passes `check` laid out as the Dockerfile lays it out
/// (rules and templates beside it), and the Dockerfile copies it rather than editing another.
#[test]
fn check_accepts_the_container_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo().join("deploy/container/gateway.toml"),
        dir.path().join("gateway.toml"),
    )
    .expect("copy the container config");
    for folder in ["rules", "templates"] {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(repo().join(folder))
            .arg(dir.path().join(folder))
            .status()
            .expect("cp");
        assert!(status.success(), "copy {folder}");
    }
    // The wallet page the image builds with scripts/paywall-bundle.sh (scripts/deps.sh made
    // the same file for the tests).
    std::fs::create_dir(dir.path().join("paywall")).expect("mkdir");
    std::fs::copy(
        repo().join("tests/interop/paywall/evm-paywall.html"),
        dir.path().join("paywall/evm-paywall.html"),
    )
    .expect("the wallet page (scripts/deps.sh makes it)");
    let config = dir.path().join("gateway.toml");
    let (code, out, err) = gateway_cli(&["check", "-c", config.to_str().expect("utf-8")], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains("COPY deploy/container/gateway.toml /etc/x402-gateway/gateway.toml"),
        "{dockerfile}"
    );
    assert!(
        dockerfile.contains("RUN scripts/paywall-bundle.sh /out/evm-paywall.html")
            && dockerfile.contains("/etc/x402-gateway/paywall/evm-paywall.html"),
        "{dockerfile}"
    );
    assert!(
        !dockerfile.contains("sed "),
        "the image edits no config with sed"
    );
}

#[test]
fn version_flag() {
    let (code, out, err) = gateway_cli(&["--version"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("x402-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `explain` names the rule and prints the very 402 the running gateway sends.
#[tokio::test]
async fn explain_prints_the_rule_and_the_exact_challenge() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", SITE_RULES)]);
    let cfg = gw.path("gateway.toml");
    let cfg = cfg.to_str().expect("utf-8 path");

    let (code, out, err) = gateway_cli(
        &[
            "explain",
            "-c",
            cfg,
            "GET",
            "http://shop.test/api//weather?city=x",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("explain prints JSON");
    assert_eq!(v["rule"]["id"], "weather");
    assert!(
        v["rule"]["origin"]
            .as_str()
            .is_some_and(|o| o.ends_with(&format!("site.toml:{}", loc(SITE_RULES, "\"weather\"")))),
        "{v}"
    );
    assert_eq!(v["decision"], "pay");
    assert_eq!(v["status"], 402);
    assert_eq!(v["rewritten_path"], "/api/weather?city=x");

    let live = send(
        &client(),
        "GET",
        &gw.url("/api//weather?city=x"),
        &[("host", "shop.test")],
    )
    .await;
    assert_eq!(live.status, 402);
    assert_eq!(
        v["paymentRequiredHeader"].as_str(),
        live.header("payment-required"),
        "explain and the gateway disagree on PAYMENT-REQUIRED"
    );
    assert_eq!(v["paymentRequired"], live.payment_required());
    assert_eq!(v["v1Body"], live.json());
    assert_eq!(
        v["paymentRequired"]["resource"]["url"],
        "http://shop.test/api/weather?city=x"
    );

    // Free, blocked and unmatched requests.
    let explain = |method: &str, url: &str| {
        let (code, out, err) = gateway_cli(&["explain", "-c", cfg, method, url], &[]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).expect("json")
    };
    let v = explain("GET", "http://shop.test/public/a");
    assert_eq!(
        (v["rule"]["id"].as_str(), v["status"].as_str()),
        (Some("public"), Some("forwarded"))
    );
    let v = explain("GET", "http://shop.test/admin/x");
    assert_eq!(
        (v["rule"]["id"].as_str(), v["status"].as_u64()),
        (Some("admin"), Some(403))
    );
    let v = explain("POST", "http://shop.test/api/weather");
    assert_eq!(v["decision"], "unmatched");
    assert_eq!(v["upstream"], "origin");
    let v = explain("GET", "http://shop.test/a%00b");
    assert_eq!(v["decision"], "refused");
    assert_eq!(v["status"], 400);

    // A bad config: exit 1 with the report.
    gw.write("rules/site.toml", "[[rule]]\nid = \"x\"\n");
    let (code, _, err) = gateway_cli(&["explain", "-c", cfg, "GET", "http://shop.test/"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("site.toml:2:6: rule.price"), "{err}");
}

/// `check` warns about priced rules that take state-changing methods in `after` mode (the
/// origin acts before the money moves, and the authorization can be cancelled after verify):
/// rules that name POST, PUT, DELETE or PATCH, and rules that take every method. Safe-method,
/// `before`-mode and free rules get no warning.
#[test]
fn check_warns_about_priced_write_methods_in_after_mode() {
    let gateway = r#"[server]
listen = ["127.0.0.1:0"]

[upstreams.origin]
peers = ["127.0.0.1:9"]

[payment]
pay_to = "0x1111111111111111111111111111111111111111"
networks = ["base-sepolia"]
"#;
    let rules = r#"[[rule]]
id = "infer"
path = "/v1/infer"
methods = ["POST"]
price = "$0.01"

[[rule]]
id = "anything"
prefix = "/any/"
price = "$0.01"

[[rule]]
id = "pages"
prefix = "/pages/"
methods = ["GET"]
price = "$0.01"

[[rule]]
id = "upfront"
path = "/v1/write"
methods = ["PUT"]
price = "$0.01"
settlement = "before"

[[rule]]
id = "open"
prefix = "/open/"
action = "free"
"#;
    let dir = folder(gateway, &[("r.toml", rules)]);
    let (code, out, err) = check(dir.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{out}");
    let file = dir.path().join("rules/r.toml").display().to_string();
    let at = |id: &str| {
        format!(
            "warning: {file}:{}: rule.settlement: rule `{id}`",
            loc(rules, &format!("\"{id}\""))
        )
    };
    assert!(
        warnings[0].starts_with(&at("infer")) && warnings[0].contains("priced for POST"),
        "{out}"
    );
    assert!(
        warnings[1].starts_with(&at("anything")) && warnings[1].contains("every method"),
        "{out}"
    );
}
