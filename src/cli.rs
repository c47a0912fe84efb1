//! The command line: `run`, `check`, `explain`, `receipts`, `probe`, `discovery`, `--version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::access::RuleAction;
use crate::config;
use crate::proxy::{request, respond};

/// A reverse proxy that puts an x402 paywall in front of any website or API.
#[derive(Debug, Parser)]
#[command(name = "x402-gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run {
        /// Path to gateway.toml.
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Write the bound addresses here (JSON) once every listener accepts connections.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Validate the configuration and every rule file; exit 1 with the full report.
    Check {
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Show how a request would be handled: the matched rule, who is asking (user agent, Web
    /// Bot Auth signature headers), what that audience pays, the exact 402.
    Explain {
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
        /// HTTP method.
        method: String,
        /// Absolute URL (`http://host/path?query`).
        url: String,
        /// Request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Summarize the receipts ledger (a table of revenue by rule) or export its lines (CSV or
    /// JSON), filtered by time and rule.
    Receipts {
        /// The configuration: where the ledger is, and which assets are worth a dollar.
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Read this ledger file instead of the configuration's `[ledger] path`.
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// From this day (`2026-12-01`) or time (RFC 3339), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Up to this day (the whole day) or time, inclusive.
        #[arg(long)]
        until: Option<String>,
        /// Only this rule (repeatable).
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// `table` (revenue by rule), `csv` or `json` (the lines, and in JSON a summary).
        #[arg(long, value_enum, default_value_t = ReceiptsFormat::Table)]
        format: ReceiptsFormat,
    },
    /// Ask a running gateway's admin listener whether it is alive (exit 0) or not (exit 1):
    /// a container health check that needs no curl.
    Probe {
        /// `http://host:port/path` of the probe (plain HTTP: the admin listener).
        #[arg(long, default_value = "http://127.0.0.1:9402/healthz")]
        url: String,
        /// Give up after this long.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Print a discovery document generated from the rules: the `/.well-known/x402` list of
    /// priced resources or the OpenAPI 3.1 document of priced routes (`x-payment-info`).
    Discovery {
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
        /// `well-known` or `openapi`.
        #[arg(long, value_enum, default_value_t = DiscoveryFormat::Openapi)]
        format: DiscoveryFormat,
        /// Scheme and host resources are named under (default `[payment] public_base_url`).
        #[arg(long)]
        base_url: Option<String>,
    },
}

/// Which document `discovery` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoveryFormat {
    WellKnown,
    Openapi,
}

/// `discovery`: the document as pretty JSON, or why it cannot be made.
pub fn discovery(
    path: &std::path::Path,
    format: DiscoveryFormat,
    base_url: Option<&str>,
) -> Result<String, String> {
    let snap = config::load(path, 1, None).map_err(|i| i.to_string())?;
    let base = base_url
        .map(|b| b.trim_end_matches('/').to_owned())
        .or_else(|| snap.payment.public_base_url.clone())
        .ok_or(
            "name the site with --base-url https://example.com (or set [payment] public_base_url)",
        )?;
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(format!("--base-url {base}: must be an http(s) URL"));
    }
    let doc = match format {
        DiscoveryFormat::WellKnown => crate::proxy::documents::well_known(&snap, &base),
        DiscoveryFormat::Openapi => crate::proxy::documents::openapi(&snap, &base),
    };
    serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())
}

/// How `receipts` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReceiptsFormat {
    Table,
    Csv,
    Json,
}

/// What `receipts` reads and how it prints.
#[derive(Debug, Clone)]
pub struct ReceiptsArgs {
    pub config: PathBuf,
    pub ledger: Option<PathBuf>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub rules: Vec<String>,
    pub format: ReceiptsFormat,
}

/// Whether a `--since`/`--until` value is a day (`YYYY-MM-DD`) or an RFC 3339 time.
fn is_day_or_time(s: &str) -> bool {
    let day = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    day || humantime::parse_rfc3339_weak(s).is_ok()
}

/// `receipts`: the report, or why it cannot be made. The configuration gives the ledger's
/// path (unless `--ledger` names one) and the dollar value of assets; without a readable
/// configuration, `--ledger` still works with the built-in assets.
pub fn receipts(a: &ReceiptsArgs) -> Result<String, String> {
    use crate::payment::receipts::{self, Filter};

    for (flag, v) in [("--since", &a.since), ("--until", &a.until)] {
        if let Some(v) = v
            && !is_day_or_time(v)
        {
            return Err(format!(
                "{flag} {v:?}: expected a day (2026-12-01) or an RFC 3339 time"
            ));
        }
    }
    let loaded = config::load(&a.config, 1, None);
    let (path, registry) = match (&a.ledger, loaded) {
        (Some(p), Ok(s)) => (p.clone(), s.registry.clone()),
        (Some(p), Err(_)) => (p.clone(), crate::x402::networks::Registry::builtin()),
        (None, Ok(s)) => match &s.ledger.path {
            Some(p) => (p.clone(), s.registry.clone()),
            None => {
                return Err("the configuration turns the ledger off ([ledger] path = \"\")".into());
            }
        },
        (None, Err(issues)) => return Err(format!("{issues}\n(or name the ledger with --ledger)")),
    };
    let filter = Filter {
        since: a.since.clone(),
        until: a.until.clone(),
        rules: a.rules.clone(),
    };
    let read = receipts::read(&path, &filter).map_err(|e| format!("{}: {e}", path.display()))?;
    for at in &read.skipped {
        eprintln!("warning: {at}: not a ledger line, skipped");
    }
    let summary = receipts::summarize(&read.receipts, &registry);
    Ok(match a.format {
        ReceiptsFormat::Table => receipts::table(&summary),
        ReceiptsFormat::Csv => receipts::csv(&read.receipts),
        ReceiptsFormat::Json => serde_json::to_string_pretty(&json!({
            "ledger": path.display().to_string(),
            "summary": summary,
            "receipts": read.receipts,
        }))
        .unwrap_or_default(),
    })
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("`{0}` is not an http://host:port/path URL")]
    BadUrl(String),
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, std::io::Error),
    #[error("{0} answered `{1}`")]
    Status(String, String),
}

/// `probe`: one `GET` over plain HTTP/1.0; `Ok` with the status line on a 2xx answer.
pub fn probe(url: &str, timeout: std::time::Duration) -> Result<String, ProbeError> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;

    let bad = || ProbeError::BadUrl(url.to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") {
        return Err(bad());
    }
    let host = uri.host().ok_or_else(bad)?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| ProbeError::Unreachable(url.to_owned(), e))?
        .next()
        .ok_or_else(bad)?;
    let unreachable = |e| ProbeError::Unreachable(url.to_owned(), e);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    s.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    s.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n").map_err(unreachable)?;
    let mut head = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while head.len() < 256 && !head.ends_with(b"\r\n") {
        match s.read(&mut byte).map_err(unreachable)? {
            0 => break,
            _ => head.push(byte[0]),
        }
    }
    let line = String::from_utf8_lossy(&head).trim_end().to_owned();
    let ok = line
        .split(' ')
        .nth(1)
        .is_some_and(|code| code.len() == 3 && code.starts_with('2'));
    if ok && line.starts_with("HTTP/") {
        Ok(line)
    } else {
        Err(ProbeError::Status(url.to_owned(), line))
    }
}

/// `check`: the report and the exit code.
pub fn check(path: &std::path::Path) -> (String, i32) {
    match config::load(path, 1, None) {
        Ok(s) => {
            let priced = s
                .rules
                .iter()
                .filter(|r| matches!(r.action, RuleAction::Pay(_)))
                .count();
            let mut report = format!(
                "ok: {} rules ({} priced) from {} rule files, {} crawlers, {} upstreams, content {}",
                s.rules.len(),
                priced,
                s.sources.rule_files.len(),
                s.crawlers.len(),
                s.upstreams.len(),
                &s.content_hash[..16]
            );
            for w in &s.warnings {
                report.push_str("\nwarning: ");
                report.push_str(w);
            }
            (report, 0)
        }
        Err(issues) => (format!("{issues}\n{} problem(s)", issues.0.len()), 1),
    }
}

/// `explain`: a JSON report of the decision for one request.
pub fn explain(
    path: &std::path::Path,
    method: &str,
    url: &str,
    headers: &[String],
) -> Result<Value, String> {
    let snap = config::load(path, 1, None).map_err(|i| i.to_string())?;
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or("the URL must be absolute (http://host/path)")?
        .to_string();
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = pingora::http::RequestHeader::build(
        method.to_ascii_uppercase().as_str(),
        pq.as_bytes(),
        None,
    )
    .map_err(|e| e.to_string())?;
    req.insert_header("host", authority)
        .map_err(|e| e.to_string())?;
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` is not `Name: value`"))?;
        req.append_header(k.trim().to_owned(), v.trim())
            .map_err(|e| e.to_string())?;
    }
    let tls = uri.scheme_str() == Some("https");
    let routed = match request::route(&snap, &req) {
        Ok(r) => r,
        Err(e) => {
            let reply = respond::request_refused(&e).reply;
            return Ok(
                json!({"decision": "refused", "status": reply.status, "reason": reply.reason}),
            );
        }
    };
    let canonical = routed.rewrite.clone();
    let Some(rule) = routed.rule.and_then(|i| snap.rules.get(i)) else {
        return Ok(
            json!({"decision": "unmatched", "status": "forwarded", "upstream": snap.upstreams[snap.default_upstream].name, "rewritten_path": canonical}),
        );
    };
    // The access decision the proxy makes (a signed request's key directory is fetched from
    // its trusted agent; nothing is charged or counted against a pass).
    let state_store: std::sync::Arc<dyn crate::state::StateStore> =
        std::sync::Arc::new(crate::state::MemoryStore::default());
    let access = crate::access::Access::new(
        std::sync::Arc::new(crate::metrics::Metrics::new()),
        state_store,
    );
    let mut state = crate::access::AccessState::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let outcome = {
        let parts = request::AccessParts::of(&req, snap.case_sensitive, tls);
        let view = parts.view(&req.headers);
        if rule.needs_access() {
            Some(rt.block_on(access.decide(
                &snap.access_env(),
                rule.access_rule(),
                &view,
                &mut state,
            )))
        } else {
            None
        }
    };
    let mut out = json!({
        "rule": {"id": rule.id, "origin": rule.origin, "host": rule.host, "path": rule.path, "methods": rule.methods.names()},
        "mode": if rule.access.shadow { "shadow" } else { "enforce" },
        "upstream": snap.upstreams.get(rule.upstream).map(|u| u.name.clone()),
        "rewritten_path": canonical,
    });
    if let Some(audience) = &state.audience {
        out["audience"] = json!({
            "kind": audience.kind(),
            "purpose": audience.purpose_label(),
            "description": audience.describe(),
            "web_bot_auth": state.bot_auth,
        });
    }
    if let Some(p) = &rule.access.pass {
        out["pass"] = json!({"ttl_seconds": p.ttl.as_secs(), "scope": p.scope, "max_requests": p.max_requests});
    }
    use crate::access::{Forwarded, Outcome};
    match outcome {
        None => {
            out["decision"] = json!(rule.action.name());
            out["status"] = match rule.action {
                RuleAction::Block => json!(403),
                _ => json!("forwarded"),
            };
        }
        Some(Outcome::Forward(how)) => {
            out["decision"] = json!(match how {
                Forwarded::Free => "free",
                Forwarded::Pass => "pass",
                Forwarded::Shadow => "shadow",
            });
            out["status"] = json!("forwarded");
            if let Some(would) = state.shadow {
                out["shadow"] = json!(would);
            }
        }
        Some(Outcome::Refused(r)) => {
            let a = respond::access_refused(&r, &rule.id, state.crawler_usd);
            out["decision"] = json!("block");
            out["status"] = json!(a.reply.status);
            out["reason"] = json!(a.reply.reason);
            if let crate::access::Refusal::Crawler(e) = r {
                out["crawlerError"] = json!(e.code());
            }
        }
        Some(Outcome::Charge { priced, .. }) => {
            if let Some(usd) = state.crawler_usd {
                out["crawlerPrice"] = json!(crate::access::crawler_price::format_usd(usd));
            }
            let url = request::resource_url(&snap, &req, routed.rewrite.as_deref(), tls);
            let reply = respond::Challenge {
                snap: &snap,
                priced: &priced,
                url: &url,
                browser: false,
                origin: None,
                crawler_usd: None,
            }
            .reply("payment_required", "payment_required", None);
            let header = reply
                .headers
                .iter()
                .find(|(k, _)| *k == crate::x402::HEADER_PAYMENT_REQUIRED)
                .map(|(_, v)| v.clone());
            let decoded: Value = header
                .as_deref()
                .and_then(|h| crate::x402::codec::decode(h.as_bytes(), 1 << 20).ok())
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            out["decision"] = json!("pay");
            out["status"] = json!(402);
            out["settlement"] = json!(rule.payment.settlement);
            out["paymentRequired"] = decoded;
            out["paymentRequiredHeader"] = json!(header);
            out["v1Body"] = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        }
    }
    Ok(out)
}
