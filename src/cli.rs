//! The command line: `run`, `check`, `explain`, `--version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::config;
use crate::proxy::{request, respond};
use crate::snapshot::RuleAction;

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
    /// Show how a request would be handled: the matched rule, the price, the exact 402.
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
            (
                format!(
                    "ok: {} rules ({} priced) from {} rule files, {} upstreams, content {}",
                    s.rules.len(),
                    priced,
                    s.sources.rule_files.len(),
                    s.upstreams.len(),
                    &s.content_hash[..16]
                ),
                0,
            )
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
            let reply = respond::Reply::from(&e);
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
    let mut out = json!({
        "rule": {"id": rule.id, "origin": rule.origin, "host": rule.host, "path": rule.path, "methods": rule.methods.names()},
        "decision": rule.action.name(),
        "upstream": snap.upstreams.get(rule.upstream).map(|u| u.name.clone()),
        "rewritten_path": canonical,
    });
    match &rule.action {
        RuleAction::Free => out["status"] = json!("forwarded"),
        RuleAction::Block => out["status"] = json!(403),
        RuleAction::Pay(priced) => {
            let url = request::resource_url(&snap, &req, routed.rewrite.as_deref(), tls);
            let reply = respond::challenge(
                &snap,
                priced,
                &url,
                "payment_required",
                "payment_required",
                false,
                None,
                None,
            );
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
            out["status"] = json!(402);
            out["settlement"] = json!(rule.settlement);
            out["paymentRequired"] = decoded;
            out["paymentRequiredHeader"] = json!(header);
            out["v1Body"] = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        }
    }
    Ok(out)
}
