//! Test support: start the gateway, the demo origin and the node devnet as child processes on
//! OS-chosen ports, wait until they are ready by polling, and talk to them.

#![allow(dead_code)]

pub mod botauth;
pub mod chain;
pub mod faulty;
pub mod otlp;
pub mod pay;
pub mod redis;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_x402-gateway");
pub const ORIGIN_BIN: &str = env!("CARGO_BIN_EXE_demo-origin");
/// Recipient used by configs that do not need a chain.
pub const PAY_TO: &str = "0x3333333333333333333333333333333333333333";

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_ready(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().filter(|s| !s.is_empty())
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo origin.
pub struct Origin {
    pub addr: String,
    _dir: TempDir,
    _proc: Proc,
}

impl Origin {
    pub fn start(name: &str) -> Origin {
        Self::start_with(name, &[])
    }

    /// The demo origin in `--lenient` mode: it resolves any request target the way lenient
    /// servers do (no leading slash, backslashes, `%2F`, a scheme without `//`), so a request
    /// the gateway forwarded under another name shows up as served priced content.
    pub fn start_lenient(name: &str) -> Origin {
        Self::start_with(name, &["--lenient"])
    }

    pub fn start_with(name: &str, extra: &[&str]) -> Origin {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = dir.path().join("ready");
        let child = Command::new(ORIGIN_BIN)
            .args(["--listen", "127.0.0.1:0", "--name", name, "--ready-file"])
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn demo-origin");
        let proc = Proc {
            child,
            name: "demo-origin",
        };
        let addr = wait_for("demo-origin", Duration::from_secs(10), || {
            read_ready(&ready)
        });
        Origin {
            addr,
            _dir: dir,
            _proc: proc,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests the origin has served (stats and health requests excluded).
    pub async fn requests(&self) -> u64 {
        let v: Value = client()
            .get(self.url("/__origin/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        v["requests"].as_u64().expect("requests")
    }

    /// What a lenient origin served: one `METHOD resolved-path` per request.
    pub async fn served(&self) -> Vec<String> {
        let v: Value = client()
            .get(self.url("/__origin/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        v["served"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self._proc.child.id()
    }
}

/// The gateway, with its own folder for config, rules and ledger.
pub struct Gateway {
    pub addr: String,
    pub admin: String,
    pub dir: TempDir,
    pub log: PathBuf,
    proc: Option<Proc>,
}

/// Installs the TLS provider reqwest needs, once.
pub fn init_tls() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTP client that does not follow redirects.
pub fn client() -> reqwest::Client {
    init_tls();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A gateway.toml for tests: listeners on port 0, one upstream, a local chain network and
/// token, and whatever `extra` adds.
pub fn config(origin: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 2

[admin]
listen = "127.0.0.1:0"

[upstreams.origin]
peers = ["{origin}"]
connect_timeout_ms = 1000
read_timeout_ms = 5000

[payment]
pay_to = "{PAY_TO}"
networks = ["base-sepolia"]

[reload]
debounce_ms = 50

[logging]
level = "info"
{extra}
"#
    )
}

impl Gateway {
    /// Writes `config` and the rule files into a fresh folder and starts the gateway on it.
    pub fn start(config: &str, rules: &[(&str, &str)]) -> Gateway {
        Self::start_with_env(config, rules, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables for the gateway process
    /// (for `${VAR}` references in the configuration).
    pub fn start_with_env(config: &str, rules: &[(&str, &str)], env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
        std::fs::write(dir.path().join("gateway.toml"), config).expect("write config");
        for (name, body) in rules {
            std::fs::write(dir.path().join("rules").join(name), body).expect("write rules");
        }
        Self::start_in_with_env(dir, env)
    }

    /// Starts the gateway on an existing folder.
    pub fn start_in(dir: TempDir) -> Gateway {
        Self::start_in_with_env(dir, &[])
    }

    /// Starts the gateway on an existing folder with extra environment variables. A gateway
    /// that finds one of its `:0` ports taken by another process (it exits with
    /// `EXIT_ADDRESS_TAKEN`) is started again, with new ports.
    pub fn start_in_with_env(dir: TempDir, env: &[(&str, &str)]) -> Gateway {
        let mut dir = dir;
        for _ in 0..4 {
            match Self::try_start(dir, env) {
                Ok(gw) => return gw,
                Err(d) => dir = d,
            }
        }
        panic!("gateway: every start found its port taken");
    }

    fn try_start(dir: TempDir, env: &[(&str, &str)]) -> Result<Gateway, TempDir> {
        const EXIT_ADDRESS_TAKEN: i32 = 3;
        let ready = dir.path().join("ready.json");
        let log = dir.path().join("gateway.log");
        let logfile = std::fs::File::create(&log).expect("log file");
        let child = Command::new(GATEWAY_BIN)
            .args(["run", "-c"])
            .arg(dir.path().join("gateway.toml"))
            .arg("--ready-file")
            .arg(&ready)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("spawn gateway");
        let mut proc = Proc {
            child,
            name: "x402-gateway",
        };
        let report: Option<Value> = wait_for("gateway ready file", Duration::from_secs(20), || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                if status.code() == Some(EXIT_ADDRESS_TAKEN) {
                    return Some(None);
                }
                panic!(
                    "gateway exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            read_ready(&ready)
                .and_then(|s| serde_json::from_str(&s).ok())
                .map(Some)
        });
        let Some(report) = report else {
            return Err(dir);
        };
        let addr = report["listen"][0].as_str().expect("listen").to_owned();
        let admin = report["admin"].as_str().expect("admin").to_owned();
        Ok(Gateway {
            addr,
            admin,
            dir,
            log,
            proc: Some(proc),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> i32 {
        self.proc.as_ref().map_or(0, |p| p.child.id() as i32)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (atomically, through a rename) relative to the gateway folder.
    pub fn write(&self, rel: &str, body: &str) {
        let path = self.path(rel);
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, body).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }

    pub async fn config_view(&self) -> Value {
        self.admin_json("/config").await
    }

    /// One admin endpoint's JSON answer (`/config`, `/readyz`, ...).
    pub async fn admin_json(&self, path: &str) -> Value {
        client()
            .get(self.admin_url(path))
            .send()
            .await
            .expect(path)
            .json()
            .await
            .expect("json")
    }

    pub async fn generation(&self) -> u64 {
        self.config_view().await["generation"]
            .as_u64()
            .expect("generation")
    }

    /// Polls `/readyz` until the gateway knows the EVM signers facilitator `name` lists in
    /// its `/supported` (fetched in the background after start).
    pub async fn wait_facilitator_signers(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = self.admin_json("/readyz").await;
            if ready["facilitator_signers"][name]["listed"]["eip155:*"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s signers never known: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the configuration generation reaches `g`.
    pub async fn wait_generation(&self, g: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.generation().await < g {
            assert!(
                Instant::now() < deadline,
                "generation {g} never loaded; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The receipts ledger's lines (`receipts.jsonl` next to its configuration).
    pub fn ledger(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("receipts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("ledger line"))
            .collect()
    }

    /// The metrics once no proxied request is in flight. A request is counted in its logging
    /// phase, after its response went out, so a client can read its answer before the
    /// gateway counts it; this waits for that (at most five seconds, for a test that keeps a
    /// request running on purpose).
    pub async fn metrics(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.metrics_now().await;
            let busy = text
                .lines()
                .any(|l| l.starts_with("x402_requests_in_flight ") && !l.ends_with(" 0"));
            if !busy || Instant::now() >= deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The metrics as they are now, requests in flight or not.
    pub async fn metrics_now(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of one metric series (labels as written by Prometheus, sorted by name).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The gateway's log once it contains `needle`. Log lines are written by a background
    /// thread, so a line can come after the response it describes; panics after ten seconds.
    pub async fn log_containing(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "{needle:?} never logged:\n{log}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The gateway's log with every line logged so far in it: a request to a path of its own
    /// is logged after them by the same writer, so once its access line is in the file, so is
    /// everything before it. For checks that something is *not* in the log (a check made too
    /// early would pass for a line not written yet). Needs the access log on.
    pub async fn log_flushed(&self) -> String {
        static MARKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mark = format!(
            "/log-mark-{}-{}",
            std::process::id(),
            MARKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        // Whatever the answer (free, priced, blocked), the request is logged.
        let _ = client().get(self.url(&mark)).send().await;
        self.log_containing(&mark).await
    }

    /// Waits for the process to exit, returning whether it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(p) = self.proc.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = p.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// A URL on which nothing listens (a port the OS handed out, then closed).
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    drop(l);
    url
}

/// Sends raw bytes and returns the raw response (until the server closes or 2 s of quiet).
pub fn raw_request(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if response_complete(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let head = text[..end].to_ascii_lowercase();
    match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        Some(n) => n
            .trim()
            .parse::<usize>()
            .is_ok_and(|n| buf.len() >= end + 4 + n),
        None => false,
    }
}

/// The status code of a raw HTTP response.
pub fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Decodes a `PAYMENT-REQUIRED` (or receipt) header value into JSON.
pub fn decode_header(v: &str) -> Value {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("json")
}

/// The decoded `PAYMENT-REQUIRED` header of an unpaid GET of `url`, which must be a 402.
pub async fn payment_required(url: &str) -> Value {
    let r = client().get(url).send().await.expect("402");
    assert_eq!(r.status(), 402, "{url}");
    decode_header(
        r.headers()
            .get("payment-required")
            .expect("PAYMENT-REQUIRED")
            .to_str()
            .expect("ascii"),
    )
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A node process from the interop harness, with its one-line JSON report.
pub struct NodeProc {
    pub info: Value,
    stdin: Option<ChildStdin>,
    proc: Proc,
}

impl NodeProc {
    /// Runs `node tests/interop/<script> args…` and reads its JSON line.
    pub fn start(script: &str, args: &[&str]) -> NodeProc {
        let interop = repo().join("tests/interop");
        assert!(
            interop.join("node_modules").is_dir(),
            "tests/interop/node_modules is missing: run `npm ci --prefix tests/interop` (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg(interop.join(script))
            .args(args)
            .env("INTEROP_QUIET", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read devnet line");
        let info: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{script} printed {line:?}: {e}"));
        NodeProc {
            info,
            stdin,
            proc: Proc {
                child,
                name: "node",
            },
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // Closing stdin asks devnet to stop its children; the kill is the backstop.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Pays `url` with the reference `@x402/fetch` v2 client (`lib/pay-v2.mjs`) as the payer
/// holding `key`; `extra`: more of its arguments.
pub async fn pay_v2(url: &str, key: &str, extra: &[&str]) -> Value {
    node_json("lib/pay-v2.mjs", &payer_args(url, key, extra), &[]).await
}

/// The arguments of an interop CLI paying `url` with `key`, then `extra`.
pub fn payer_args(url: &str, key: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--url".into(),
        url.into(),
        "--private-key".into(),
        key.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs a node CLI to completion and parses the JSON line it prints.
pub async fn node_json(script: &str, args: &[String], env: &[(&str, &str)]) -> Value {
    let interop = repo().join("tests/interop");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(interop.join(script))
        .args(args)
        .env("INTEROP_QUIET", "1")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{script} printed {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Merges `cfg` into a test facilitator's fault configuration (`POST /__config`).
pub async fn facilitator_config(facilitator_url: &str, cfg: &Value) {
    let r = client()
        .post(format!("{facilitator_url}/__config"))
        .json(cfg)
        .send()
        .await
        .expect("facilitator config");
    assert!(
        r.status().is_success(),
        "facilitator config refused: {}",
        r.text().await.unwrap_or_default()
    );
}

/// A `[[facilitators]]` entry, with a five-second timeout: long enough for a settlement on
/// a loaded test machine, short against the faults that hang for ten.
pub fn facilitator_toml(name: &str, url: &str, priority: u32, extra: &str) -> String {
    format!(
        "[[facilitators]]\nname = \"{name}\"\nurl = \"{url}\"\npriority = {priority}\ntimeout_ms = 5000\n{extra}\n"
    )
}

/// Anvil account 1 (a public test key): the built-in settler's relayer, which sends
/// settlements and pays gas.
pub const RELAYER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
pub const RELAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

/// A `[[facilitators]]` table for the built-in settler named `self` on the devnet's chain,
/// relaying with [`RELAYER_KEY`].
pub fn local_settler_toml(dev: &Value, timeout_ms: u64, receipt_timeout_ms: u64) -> String {
    let network = format!("eip155:{}", dev["chainId"].as_u64().expect("chain id"));
    format!(
        "[[facilitators]]\nname = \"self\"\nkind = \"local\"\nrelayer_key = \"{RELAYER_KEY}\"\nnetworks = [\"{network}\"]\ntimeout_ms = {timeout_ms}\nreceipt_timeout_ms = {receipt_timeout_ms}\n"
    )
}

/// A gateway.toml for payments on a devnet (see `NodeProc` with `lib/devnet.mjs`): the chain
/// declared with its RPC endpoint, the devnet token as the USD asset, the given facilitators.
pub fn paid_config(origin: &str, dev: &Value, facilitators: &str, payment_extra: &str) -> String {
    let chain_id = dev["chainId"].as_u64().expect("chain id");
    let network = format!("eip155:{chain_id}");
    let token = &dev["token"];
    let rpc = dev["rpcUrl"].as_str().expect("rpc");
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 2

[admin]
listen = "127.0.0.1:0"

[upstreams.origin]
peers = ["{origin}"]

[[networks]]
id = "{network}"
rpc_urls = ["{rpc}"]

[[assets]]
id = "tusd"
network = "{network}"
address = "{address}"
name = "{name}"
version = "{version}"
decimals = 6
usd = true

{facilitators}

[logging]
level = "info"

[payment]
pay_to = "{pay_to}"
networks = ["{network}"]
{payment_extra}
"#,
        address = token["address"].as_str().expect("address"),
        name = token["name"].as_str().expect("name"),
        version = token["version"].as_str().expect("version"),
        pay_to = dev["payTo"].as_str().expect("payTo"),
    )
}

/// Runs chromium headless on a URL with `args`; fails the test when chromium is missing.
pub fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&bin).exists(),
        "chromium not found at {bin}: install it (apt-get install chromium) or set CHROMIUM"
    );
    let profile = tempfile::tempdir().expect("profile");
    let mut child = std::process::Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("chromium output")
}

/// Every request a test facilitator (`lib/facilitator.mjs` at `facilitator_url`) received,
/// oldest first, as it logged them (method, path, headers, body).
pub async fn facilitator_log(facilitator_url: &str) -> Vec<Value> {
    client()
        .get(format!("{facilitator_url}/__log"))
        .send()
        .await
        .expect("facilitator log")
        .json()
        .await
        .expect("json")
}

/// The paths a test facilitator was asked for, `/supported` probes left out.
pub async fn facilitator_paths(facilitator_url: &str) -> Vec<String> {
    facilitator_log(facilitator_url)
        .await
        .iter()
        .filter_map(|e| e["path"].as_str())
        .filter(|p| *p != "/supported")
        .map(str::to_owned)
        .collect()
}

/// The `/verify` and `/settle` calls a test facilitator received, oldest first.
pub async fn facilitator_calls(facilitator_url: &str) -> Vec<Value> {
    facilitator_log(facilitator_url)
        .await
        .into_iter()
        .filter(|e| e["path"] == "/verify" || e["path"] == "/settle")
        .collect()
}

/// A headless Chromium screenshot of `url` at `size` (`"1024,768"`): the PNG's bytes, checked
/// to be a rendered image of at least `min_bytes`.
pub async fn screenshot(url: &str, size: &str, min_bytes: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("dir");
    let png = dir.path().join("shot.png");
    let shot = tokio::task::spawn_blocking({
        let (url, png, size) = (url.to_owned(), png.clone(), size.to_owned());
        move || {
            chromium(
                &[
                    &format!("--screenshot={}", png.display()),
                    &format!("--window-size={size}"),
                ],
                &url,
            )
        }
    })
    .await
    .expect("join");
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&shot.stderr)
        )
    });
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() >= min_bytes,
        "not a rendered page ({} bytes)",
        bytes.len()
    );
    bytes
}
