//! The deployment kit: `deploy/kubernetes` validates against the Kubernetes API schemas
//! (`kubernetes-validate --strict`), its ConfigMaps laid out as the pod mounts them pass
//! `check` with the environment its Deployment gives, every `${VAR}` without a default is
//! provided; `deploy/compose` refers only to files that exist, its gateway configuration
//! passes `check`, its Prometheus configuration passes `promtool`; the image needs no curl.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::core::gateway_cli;
use crate::support::*;

fn venv_bin(tool: &str) -> PathBuf {
    repo().join("tests/interop/.venv/bin").join(tool)
}

/// Every YAML document of a file, as JSON (PyYAML from the test venv).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
        ])
        .arg(path)
        .output()
        .expect("the test venv's python (scripts/deps.sh makes it)");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The `${VAR}` references without a default in a text.
fn required_vars(text: &str) -> Vec<String> {
    let mut vars = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let body = &rest[i + 2..];
        let end = body.find('}').expect("terminated reference");
        if !body[..end].contains(":-") {
            vars.push(body[..end].to_owned());
        }
        rest = &body[end + 1..];
    }
    vars
}

fn check_config(config: &Path, env: &[(&str, &str)]) {
    let (code, out, err) = gateway_cli(&["check", "-c", config.to_str().expect("utf-8 path")], env);
    assert_eq!(code, 0, "{}: {out}{err}", config.display());
    assert!(out.starts_with("ok: "), "{out}");
}

/// A base64 Ed25519 seed of the shape the CDP facilitator issues (a test value).
const TEST_CDP_SECRET: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

#[test]
fn the_kubernetes_manifests_validate_and_their_configuration_checks() {
    let dir = repo().join("deploy/kubernetes");
    let manifests = [
        "configmap.yaml",
        "secret.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
    ];
    let out = Command::new(venv_bin("kubernetes-validate"))
        .arg("--strict")
        .args(manifests)
        .current_dir(&dir)
        .output()
        .expect("kubernetes-validate (scripts/deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 7, "{text}");
    // kustomization.yaml lists exactly these files.
    let kustomization = &yaml_documents(&dir.join("kustomization.yaml"))[0];
    let mut listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|v| v.as_str().expect("file"))
        .collect();
    listed.sort_unstable();
    let mut want = manifests.to_vec();
    want.sort_unstable();
    assert_eq!(listed, want);

    // The pod's layout: the config ConfigMap at conf/, the rules ConfigMap at rules.d/.
    let maps = yaml_documents(&dir.join("configmap.yaml"));
    let deployment = &yaml_documents(&dir.join("deployment.yaml"))[0];
    let spec = &deployment["spec"]["template"]["spec"];
    let gateway = spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "x402-gateway")
        .expect("the gateway container");
    let root = tempfile::tempdir().expect("tempdir");
    let mount_of = |volume_map: &str| -> PathBuf {
        let volume = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["configMap"]["name"] == volume_map)
            .unwrap_or_else(|| panic!("a volume for {volume_map}"));
        let mount = gateway["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap_or_else(|| panic!("{volume_map} is mounted"));
        let path = mount["mountPath"].as_str().expect("mountPath");
        root.path().join(path.trim_start_matches('/'))
    };
    let mut config_path = None;
    for map in &maps {
        let name = map["metadata"]["name"].as_str().expect("name");
        let folder = mount_of(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        for (file, body) in map["data"].as_object().expect("data") {
            std::fs::write(folder.join(file), body.as_str().expect("text")).expect("write");
            if file == "gateway.toml" {
                config_path = Some(folder.join(file));
            }
        }
    }
    let config_path = config_path.expect("gateway.toml in a ConfigMap");
    let args: Vec<&str> = gateway["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    let in_pod = config_path
        .strip_prefix(root.path())
        .expect("under the root");
    assert_eq!(
        args,
        ["run", "-c", &format!("/{}", in_pod.display())],
        "the container runs the mounted configuration"
    );

    // The environment the Deployment gives, secrets replaced by test values.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in gateway["env"].as_array().expect("env") {
        let name = e["name"].as_str().expect("name").to_owned();
        let value = match e["value"].as_str() {
            Some(v) => v.to_owned(),
            None => {
                assert!(
                    e["valueFrom"]["secretKeyRef"]["name"] == "x402-gateway",
                    "{e}"
                );
                match name.as_str() {
                    "CDP_API_KEY_SECRET" => TEST_CDP_SECRET.to_owned(),
                    _ => format!("test-{}-0123456789abcdef0123456789", name.to_lowercase()),
                }
            }
        };
        env.push((name, value));
    }
    let config_text = std::fs::read_to_string(&config_path).expect("config");
    for var in required_vars(&config_text) {
        assert!(
            env.iter().any(|(n, _)| *n == var),
            "${{{var}}} is used by gateway.toml but the Deployment does not set it"
        );
    }
    let secret = &yaml_documents(&dir.join("secret.yaml"))[0];
    for e in gateway["env"].as_array().expect("env") {
        if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            assert!(
                secret["stringData"].get(key).is_some(),
                "the Secret has no {key}"
            );
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    check_config(&config_path, &env);
    // Probes point at the admin port the configuration listens on.
    assert!(config_text.contains("listen = \"0.0.0.0:9402\""));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(gateway[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert!(gateway["resources"]["limits"]["memory"].is_string());
}

#[test]
fn the_compose_stack_refers_to_real_files_and_its_configuration_checks() {
    let dir = repo().join("deploy/compose");
    let compose = &yaml_documents(&dir.join("compose.yaml"))[0];
    let services = compose["services"].as_object().expect("services");
    for name in [
        "origin",
        "redis",
        "gateway-a",
        "gateway-b",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "{name} missing");
    }
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let host = v
                .as_str()
                .expect("short volume syntax")
                .split(':')
                .next()
                .expect("host");
            assert!(
                dir.join(host).exists(),
                "{name}: {host} does not exist beside compose.yaml"
            );
        }
        if let Some(build) = s["build"]["context"].as_str() {
            assert!(
                dir.join(build).join("Dockerfile").exists(),
                "{name}: {build}"
            );
        }
    }

    // The gateway configuration as the replicas mount it (the origin resolvable here).
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::copy(dir.join("gateway.toml"), root.path().join("gateway.toml")).expect("copy");
    std::fs::create_dir(root.path().join("rules")).expect("mkdir");
    for f in std::fs::read_dir(dir.join("rules")).expect("rules") {
        let f = f.expect("entry").path();
        std::fs::copy(
            &f,
            root.path().join("rules").join(f.file_name().expect("name")),
        )
        .expect("copy");
    }
    let gateway_env = &services["gateway-a"]["environment"];
    let pay_to = gateway_env["X402_PAY_TO"].as_str().expect("X402_PAY_TO");
    let pay_to = pay_to
        .strip_prefix("${X402_PAY_TO:-")
        .and_then(|v| v.strip_suffix('}'))
        .unwrap_or(pay_to);
    check_config(
        &root.path().join("gateway.toml"),
        &[
            ("X402_ORIGIN", "127.0.0.1:8080"),
            ("X402_PAY_TO", pay_to),
            ("X402_PASS_KEY", "0123456789abcdef0123456789abcdef-test"),
            ("X402_REPLICA_ID", "a"),
        ],
    );
    // Prometheus scrapes with the token the gateways use, and loads the shipped alerts.
    let prom = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        dir.join("prometheus.yml"),
        prom.path().join("prometheus.yml"),
    )
    .expect("copy");
    std::fs::copy(
        repo().join("deploy/prometheus/alerts.yml"),
        prom.path().join("alerts.yml"),
    )
    .expect("copy");
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(prom.path())
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let gateway_toml = std::fs::read_to_string(dir.join("gateway.toml")).expect("config");
    let prometheus_yml = std::fs::read_to_string(dir.join("prometheus.yml")).expect("prom");
    let token = gateway_toml
        .split("auth_token = \"${X402_ADMIN_TOKEN:-")
        .nth(1)
        .and_then(|r| r.split('}').next())
        .expect("a default admin token");
    assert!(prometheus_yml.contains(&format!("credentials: {token}")));
}

/// The image's health check is the gateway's own `probe`: it answers 0 against a live admin
/// listener and 1 against a closed port or a failing probe.
#[tokio::test]
async fn the_image_health_check_needs_no_curl() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    assert!(
        !dockerfile
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("curl")),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("CMD [\"x402-gateway\", \"probe\""));
    assert!(dockerfile.contains("FROM debian:trixie-slim"));

    let origin = Origin::start("o1");
    let gw = Gateway::start(
        &config(&origin.addr, ""),
        &[("site.toml", FREE_RULES_FOR_DEPLOY)],
    );
    let (code, out, err) = gateway_cli(&["probe", "--url", &gw.admin_url("/healthz")], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("HTTP/1."), "{out}");
    let (code, _, err) = gateway_cli(&["probe", "--url", &gw.admin_url("/nope")], &[]);
    assert_eq!(code, 1, "a 404 is not healthy");
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = gateway_cli(&["probe", "--url", &format!("{}/healthz", dead_url())], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
    let (code, _, err) = gateway_cli(&["probe", "--url", "https://127.0.0.1:1/"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("is not an http://"), "{err}");
}

const FREE_RULES_FOR_DEPLOY: &str = "[[rule]]\nid = \"all\"\nprefix = \"/\"\naction = \"free\"\n";

/// The mainnet examples pass `check` with the environment their comments list, name Base and
/// its USDC, and every `${VAR}` they need without a default is one those comments list.
#[test]
fn the_mainnet_examples_check_with_their_documented_environment() {
    let dir = repo().join("deploy/mainnet");
    let pay_to = "0x1111111111111111111111111111111111111111";
    let env = [
        ("X402_PAY_TO", pay_to),
        ("CDP_API_KEY_ID", "organizations/test/apiKeys/test"),
        ("CDP_API_KEY_SECRET", TEST_CDP_SECRET),
        (
            "RELAYER_KEY",
            "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        ),
    ];
    for file in ["cdp.toml", "pool.toml", "self-settled.toml"] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).expect("example");
        for var in required_vars(&text) {
            assert!(
                text.lines()
                    .take_while(|l| l.starts_with('#'))
                    .any(|l| l.contains(&var)),
                "{file}: ${{{var}}} is not documented in its header"
            );
            assert!(env.iter().any(|(n, _)| *n == var), "{file}: {var}");
        }
        let (code, out, err) =
            gateway_cli(&["check", "-c", path.to_str().expect("utf-8 path")], &env);
        assert_eq!(code, 0, "{file}: {out}{err}");
        assert!(!out.contains("warning: "), "{file}: {out}");
        let (code, out, err) = gateway_cli(
            &[
                "explain",
                "-c",
                path.to_str().expect("utf-8 path"),
                "GET",
                "http://shop.test/api/data",
            ],
            &env,
        );
        assert_eq!(code, 0, "{file}: {err}");
        let v: Value = serde_json::from_str(&out).expect("explain prints JSON");
        let offer = &v["paymentRequired"]["accepts"][0];
        assert_eq!(offer["network"], "eip155:8453", "{file}: {v}");
        assert_eq!(
            offer["asset"], "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
            "{file}: Base USDC"
        );
        assert_eq!(offer["amount"], "10000");
        assert_eq!(offer["payTo"], pay_to);
    }
}
