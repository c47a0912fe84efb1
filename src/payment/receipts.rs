//! Reading the receipts ledger back: its lines (the live file and the rotated ones), filters by
//! time and rule, and the revenue summaries that `x402-gateway receipts` prints and the admin
//! revenue page shows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::x402::networks::{Registry, atomic_to_usd};

/// One ledger line as read back (fields a line lacks are empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Receipt {
    pub time: String,
    pub event: String,
    pub rule: String,
    pub resource: String,
    pub payer: String,
    pub amount: String,
    pub asset: String,
    pub network: String,
    pub transaction: String,
    pub facilitator: String,
    pub settlement: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub replica: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub audience: String,
}

impl Receipt {
    /// Money that reached `pay_to`: a settlement, or one resolved later from the chain.
    pub fn is_revenue(&self) -> bool {
        matches!(self.event.as_str(), "settled" | "settled_late")
    }
}

/// Which lines to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// From this time on: an RFC 3339 time or a date (`2026-12-01`), inclusive.
    pub since: Option<String>,
    /// Up to this time: an RFC 3339 time, or a date, whose whole day is included.
    pub until: Option<String>,
    /// Only these rules (none: every rule).
    pub rules: Vec<String>,
}

impl Filter {
    pub fn keeps(&self, r: &Receipt) -> bool {
        if let Some(since) = &self.since
            && r.time.as_str() < since.as_str()
        {
            return false;
        }
        if let Some(until) = &self.until {
            let compared = if until.len() == 10 {
                r.time.get(..10).unwrap_or(&r.time)
            } else {
                r.time.as_str()
            };
            if compared > until.as_str() {
                return false;
            }
        }
        self.rules.is_empty() || self.rules.contains(&r.rule)
    }
}

/// Lines that could not be read, with where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    pub receipts: Vec<Receipt>,
    /// `file:line` of lines that are not ledger JSON (a torn last line after a crash).
    pub skipped: Vec<String>,
}

/// The ledger's files, oldest first: `path.N` … `path.1`, then `path`.
pub fn files(path: &Path) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    for i in 1.. {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        let p = PathBuf::from(p);
        if !p.exists() {
            break;
        }
        rotated.push(p);
    }
    rotated.reverse();
    rotated.push(path.to_path_buf());
    rotated
}

/// Every line of the ledger at `path` (rotated files first) that `filter` keeps, oldest first.
/// A file that does not exist reads as empty.
pub fn read(path: &Path, filter: &Filter) -> std::io::Result<Read> {
    let mut out = Read::default();
    for file in files(path) {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Receipt>(line) {
                Ok(r) if filter.keeps(&r) => out.receipts.push(r),
                Ok(_) => {}
                Err(_) => out.skipped.push(format!("{}:{}", file.display(), n + 1)),
            }
        }
    }
    Ok(out)
}

/// Revenue of one group (a rule, an audience, a network …).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Total {
    /// Revenue lines counted.
    pub payments: u64,
    /// Atomic units by `network asset`.
    pub atomic: BTreeMap<String, u128>,
    /// US dollars, for assets worth one dollar a unit.
    pub usd: f64,
}

impl Total {
    fn add(&mut self, r: &Receipt, amount: u128, usd: Option<f64>) {
        self.payments += 1;
        *self
            .atomic
            .entry(format!("{} {}", r.network, r.asset))
            .or_default() += amount;
        self.usd += usd.unwrap_or(0.0);
    }
}

/// Revenue by rule, audience and network, and in all.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub total: Total,
    pub by_rule: BTreeMap<String, Total>,
    pub by_audience: BTreeMap<String, Total>,
    pub by_network: BTreeMap<String, Total>,
    /// Refused or failed settlements (every non-revenue line), by event.
    pub other_events: BTreeMap<String, u64>,
}

/// Sums the revenue lines of `receipts`; dollars come from `registry`'s one-dollar assets.
pub fn summarize<'a>(
    receipts: impl IntoIterator<Item = &'a Receipt>,
    registry: &Registry,
) -> Summary {
    let mut s = Summary::default();
    for r in receipts {
        if !r.is_revenue() {
            *s.other_events.entry(r.event.clone()).or_default() += 1;
            continue;
        }
        let amount: u128 = r.amount.parse().unwrap_or(0);
        let usd = registry
            .asset(&r.network, &r.asset)
            .filter(|a| a.usd)
            .map(|a| atomic_to_usd(u64::try_from(amount).unwrap_or(u64::MAX), a.decimals));
        s.total.add(r, amount, usd);
        s.by_rule
            .entry(r.rule.clone())
            .or_default()
            .add(r, amount, usd);
        let audience = if r.audience.is_empty() {
            "-".to_owned()
        } else {
            r.audience.clone()
        };
        s.by_audience
            .entry(audience)
            .or_default()
            .add(r, amount, usd);
        s.by_network
            .entry(r.network.clone())
            .or_default()
            .add(r, amount, usd);
    }
    s
}

/// Dollars as `$1,234.56` (cents, rounded; smaller amounts keep their digits).
pub fn format_usd(usd: f64) -> String {
    if usd != 0.0 && usd.abs() < 0.01 {
        return format!("${usd:.6}");
    }
    let cents = (usd * 100.0).round() as i128;
    let (whole, frac) = (cents / 100, (cents % 100).abs());
    let digits = whole.abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}${grouped}.{frac:02}")
}

/// The summary as a text table: one line per rule, then the total.
pub fn table(s: &Summary) -> String {
    let mut rows = vec![[
        "rule".to_owned(),
        "payments".to_owned(),
        "usd".to_owned(),
        "atomic units".to_owned(),
    ]];
    let atomic = |t: &Total| {
        t.atomic
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (rule, t) in &s.by_rule {
        rows.push([
            rule.clone(),
            t.payments.to_string(),
            format_usd(t.usd),
            atomic(t),
        ]);
    }
    rows.push([
        "total".to_owned(),
        s.total.payments.to_string(),
        format_usd(s.total.usd),
        atomic(&s.total),
    ]);
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for (event, n) in &s.other_events {
        out.push_str(&format!("{event}: {n}\n"));
    }
    out
}

/// The lines as CSV (RFC 4180 quoting), with a header.
pub fn csv(receipts: &[Receipt]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    };
    let mut out = String::from(
        "time,event,rule,audience,resource,payer,amount,asset,network,transaction,facilitator,settlement,reason,upstream_status,replica,request_id\n",
    );
    for r in receipts {
        let fields = [
            r.time.as_str(),
            &r.event,
            &r.rule,
            &r.audience,
            &r.resource,
            &r.payer,
            &r.amount,
            &r.asset,
            &r.network,
            &r.transaction,
            &r.facilitator,
            &r.settlement,
            r.reason.as_deref().unwrap_or(""),
            &r.upstream_status.map(|s| s.to_string()).unwrap_or_default(),
            &r.replica,
            &r.request_id,
        ];
        let line: Vec<String> = fields.iter().map(|f| quote(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, event: &str, rule: &str, amount: &str, audience: &str) -> String {
        serde_json::json!({
            "time": time, "event": event, "rule": rule, "resource": "http://x/y",
            "payer": "0x1", "amount": amount,
            "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "network": "eip155:84532",
            "transaction": "0xab", "facilitator": "f", "settlement": "after",
            "audience": audience,
        })
        .to_string()
    }

    #[test]
    fn reads_rotated_files_in_order_filters_and_sums_in_dollars() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("receipts.jsonl");
        std::fs::write(
            path.with_extension("jsonl.1"),
            line("2026-12-01T10:00:00.000Z", "settled", "a", "10000", "human") + "\n",
        )
        .expect("write");
        std::fs::write(
            &path,
            [
                line(
                    "2026-12-05T10:00:00.000Z",
                    "settled",
                    "a",
                    "2500000",
                    "agent",
                ),
                line("2026-12-06T23:59:59.000Z", "settled_late", "b", "50000", ""),
                line(
                    "2026-12-06T12:00:00.000Z",
                    "settle_failed",
                    "b",
                    "50000",
                    "",
                ),
                "{\"time\": \"2026-12-06T".to_owned(),
            ]
            .join("\n"),
        )
        .expect("write");
        let all = read(&path, &Filter::default()).expect("read");
        assert_eq!(all.receipts.len(), 4);
        assert_eq!(
            all.receipts[0].time, "2026-12-01T10:00:00.000Z",
            "oldest first"
        );
        assert_eq!(all.skipped.len(), 1, "the torn line is reported");
        let registry = Registry::builtin();
        let s = summarize(&all.receipts, &registry);
        assert_eq!(s.total.payments, 3);
        assert!((s.total.usd - 2.56).abs() < 1e-9, "{}", s.total.usd);
        assert_eq!(s.by_rule["a"].payments, 2);
        assert_eq!(s.by_audience["-"].payments, 1);
        assert_eq!(s.other_events["settle_failed"], 1);
        assert_eq!(
            s.total.atomic["eip155:84532 0x036CbD53842c5426634e7929541eC2318f3dCF7e"],
            2_560_000
        );

        let f = Filter {
            since: Some("2026-12-05".into()),
            until: Some("2026-12-06".into()),
            rules: vec!["b".into()],
        };
        let some = read(&path, &f).expect("read");
        assert_eq!(
            some.receipts.len(),
            2,
            "the 6th is included to its last second"
        );
        let f = Filter {
            until: Some("2026-12-05T09:00:00Z".into()),
            ..Filter::default()
        };
        assert_eq!(read(&path, &f).expect("read").receipts.len(), 1);

        let t = table(&s);
        assert!(t.contains("total"), "{t}");
        assert!(t.contains("$2.56"), "{t}");
        let c = csv(&all.receipts);
        assert_eq!(c.lines().count(), 5);
        assert!(c.starts_with("time,event,rule,audience,"));
    }

    #[test]
    fn dollars_are_formatted_with_cents_and_thousands() {
        assert_eq!(format_usd(0.0), "$0.00");
        assert_eq!(format_usd(2.56), "$2.56");
        assert_eq!(format_usd(1234567.891), "$1,234,567.89");
        assert_eq!(format_usd(0.001), "$0.001000");
        assert_eq!(format_usd(-3.5), "-$3.50");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = Receipt {
            resource: "http://x/a,b\"c".into(),
            ..Receipt::default()
        };
        assert!(csv(&[r]).contains("\"http://x/a,b\"\"c\""));
    }
}
