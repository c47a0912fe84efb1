//! The admin listener's revenue page (`/revenue`): one self-contained HTML document (inline
//! style, no script, no external asset) with revenue today and over seven days by rule,
//! audience and network, the latest receipts, facilitator health and what shadow-mode rules
//! would have charged. Rendering is a pure function of what the admin handler gathered.

use std::fmt::Write as _;

use crate::payment::receipts::{Receipt, Summary, Total, format_usd};
use crate::template::escape;

/// A facilitator as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FacilitatorRow {
    pub name: String,
    pub healthy: bool,
}

/// What a shadow-mode rule would have charged, per asset.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRow {
    pub rule: String,
    pub network: String,
    pub asset: String,
    pub atomic: u64,
    /// In dollars, for one-dollar assets.
    pub usd: Option<f64>,
}

/// Everything the page shows.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// `YYYY-MM-DD` (UTC) of "today".
    pub today: String,
    /// The first day of the seven-day window.
    pub week_from: String,
    pub today_summary: Summary,
    pub week_summary: Summary,
    /// Newest first.
    pub recent: Vec<Receipt>,
    pub facilitators: Vec<FacilitatorRow>,
    pub shadow: Vec<ShadowRow>,
    /// Ledger lines that could not be read.
    pub skipped: usize,
    /// The ledger is turned off (`[ledger] path = ""`).
    pub no_ledger: bool,
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1d1d1f;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em}\
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:1em 1.4em;min-width:12em}\
.card .v{font-size:1.8em;font-weight:600}.card .l{color:#666}\
table{border-collapse:collapse;background:#fff;min-width:30em}th,td{border:1px solid #ddd;padding:.35em .7em;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#137333}.bad{color:#b3261e}.muted{color:#666}\
code{font-size:.9em}";

/// The page.
pub fn render(p: &Page) -> String {
    let mut h = String::with_capacity(8192);
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta http-equiv=\"refresh\" content=\"30\">");
    h.push_str("<title>x402-gateway revenue</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body><h1>Revenue</h1>");
    let _ = write!(
        h,
        "<p class=\"muted\">Settled payments from the receipts ledger, UTC days; today is {}.</p>",
        escape(&p.today)
    );
    if p.no_ledger {
        h.push_str("<p class=\"bad\" id=\"no-ledger\">The receipts ledger is off (<code>[ledger] path = \"\"</code>): nothing to show.</p>");
    }
    h.push_str("<div class=\"cards\">");
    card(
        &mut h,
        "today-usd",
        &format_usd(p.today_summary.total.usd),
        "today",
    );
    card(
        &mut h,
        "week-usd",
        &format_usd(p.week_summary.total.usd),
        &format!("7 days (since {})", p.week_from),
    );
    card(
        &mut h,
        "today-payments",
        &p.today_summary.total.payments.to_string(),
        "payments today",
    );
    card(
        &mut h,
        "week-payments",
        &p.week_summary.total.payments.to_string(),
        "payments in 7 days",
    );
    h.push_str("</div>");

    groups(&mut h, "by-rule", "By rule", "rule", p, |s| &s.by_rule);
    groups(&mut h, "by-audience", "By audience", "audience", p, |s| {
        &s.by_audience
    });
    groups(&mut h, "by-network", "By network", "network", p, |s| {
        &s.by_network
    });

    h.push_str("<h2>Latest receipts</h2><table id=\"recent\"><tr><th>time</th><th>event</th><th>rule</th><th>amount</th><th>payer</th><th>transaction</th></tr>");
    for r in &p.recent {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{} <span class=\"muted\">{}</span></td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            escape(&r.time),
            escape(&r.event),
            escape(&r.rule),
            escape(&r.amount),
            escape(&r.network),
            escape(&r.payer),
            escape(&r.transaction)
        );
    }
    if p.recent.is_empty() {
        h.push_str("<tr><td colspan=\"6\" class=\"muted\">none yet</td></tr>");
    }
    h.push_str("</table>");

    h.push_str(
        "<h2>Facilitators</h2><table id=\"facilitators\"><tr><th>name</th><th>state</th></tr>",
    );
    for f in &p.facilitators {
        let (class, state) = if f.healthy {
            ("ok", "in rotation")
        } else {
            ("bad", "ejected")
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{class}\">{state}</td></tr>",
            escape(&f.name)
        );
    }
    h.push_str("</table>");

    h.push_str("<h2>Shadow mode: would have charged</h2><table id=\"shadow\"><tr><th>rule</th><th>usd</th><th>atomic units</th></tr>");
    for s in &p.shadow {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{} <span class=\"muted\">{} {}</span></td></tr>",
            escape(&s.rule),
            s.usd.map(format_usd).unwrap_or_else(|| "-".into()),
            s.atomic,
            escape(&s.network),
            escape(&s.asset)
        );
    }
    if p.shadow.is_empty() {
        h.push_str(
            "<tr><td colspan=\"3\" class=\"muted\">no shadow-mode traffic since start</td></tr>",
        );
    }
    h.push_str("</table>");
    if p.skipped > 0 {
        let _ = write!(
            h,
            "<p class=\"bad\">{} ledger lines could not be read.</p>",
            p.skipped
        );
    }
    h.push_str("</body></html>\n");
    h
}

fn card(h: &mut String, id: &str, value: &str, label: &str) {
    let _ = write!(
        h,
        "<div class=\"card\"><div class=\"v\" id=\"{id}\">{}</div><div class=\"l\">{}</div></div>",
        escape(value),
        escape(label)
    );
}

/// One table of groups with today's and the week's figures side by side.
fn groups(
    h: &mut String,
    id: &str,
    title: &str,
    what: &str,
    p: &Page,
    pick: impl Fn(&Summary) -> &std::collections::BTreeMap<String, Total>,
) {
    let _ = write!(
        h,
        "<h2>{title}</h2><table id=\"{id}\"><tr><th>{what}</th><th>today</th><th>payments today</th><th>7 days</th><th>payments in 7 days</th></tr>"
    );
    let week = pick(&p.week_summary);
    let today = pick(&p.today_summary);
    for (name, w) in week {
        let t = today.get(name).cloned().unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(name),
            format_usd(t.usd),
            t.payments,
            format_usd(w.usd),
            w.payments
        );
    }
    if week.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"muted\">no revenue in 7 days</td></tr>");
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_it_shows_and_keeps_to_itself() {
        let r = Receipt {
            time: "2026-12-06T10:00:00.000Z".into(),
            event: "settled".into(),
            rule: "<script>alert(1)</script>".into(),
            amount: "10000".into(),
            ..Receipt::default()
        };
        let page = Page {
            today: "2026-12-06".into(),
            week_from: "2026-11-30".into(),
            recent: vec![r],
            facilitators: vec![FacilitatorRow {
                name: "cdp".into(),
                healthy: false,
            }],
            ..Page::default()
        };
        let html = render(&page);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("ejected"));
        for external in ["src=", "href=", "http://", "https://", "url("] {
            assert!(!html.contains(external), "{external} in the page");
        }
    }
}
