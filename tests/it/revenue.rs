//! The revenue view: after real payments settle on chain and a shadow-mode rule sees traffic,
//! the admin listener's `/revenue` page, rendered in headless Chromium (and screenshot), shows
//! figures that agree with the ledger; `x402-gateway receipts` summarizes and exports the same
//! ledger as a table, CSV and JSON, with day and rule filters.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::core::gateway_cli;
use crate::facilitators::Two;
use crate::support::*;

/// The text of the element with `id` in a rendered DOM.
fn by_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\">"))
        .unwrap_or_else(|| panic!("#{id} not in the page:\n{dom}"))
        + id.len()
        + 6;
    &dom[start..start + dom[start..].find('<').expect("closing tag")]
}

/// The cells of the table row whose first cell is `first`, in the table with `id`.
fn row(dom: &str, id: &str, first: &str) -> Vec<String> {
    let table = &dom[dom.find(&format!("<table id=\"{id}\">")).expect("table")..];
    let table = &table[..table.find("</table>").expect("end of table")];
    for tr in table.split("<tr>").skip(1) {
        let cells: Vec<String> = tr
            .split("<td")
            .skip(1)
            .map(|c| {
                let c = &c[c.find('>').expect("cell") + 1..];
                let text = &c[..c.find("</td>").expect("end of cell")];
                // Drop inner tags (a muted span).
                let mut out = String::new();
                let mut in_tag = false;
                for ch in text.chars() {
                    match ch {
                        '<' => in_tag = true,
                        '>' => in_tag = false,
                        _ if !in_tag => out.push(ch),
                        _ => {}
                    }
                }
                out.trim().to_owned()
            })
            .collect();
        if cells.first().map(String::as_str) == Some(first) {
            return cells;
        }
    }
    panic!("no row {first} in #{id}:\n{table}");
}

#[tokio::test]
async fn the_revenue_page_and_the_receipts_command_agree_with_the_ledger() {
    let t = Two::start_with(None, "", "");
    // A shadow-mode rule: counted, never charged.
    t.gw.write(
        "rules/shadow.toml",
        "[[rule]]\nid = \"preview\"\nprefix = \"/preview\"\nprice = \"$0.05\"\nmode = \"shadow\"\n",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.gw.metric("x402_config_generation").await < 2.0 {
        assert!(Instant::now() < deadline, "the rules were not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    for path in ["/api/weather", "/api/weather", "/status/200"] {
        let r = t.pay(path, &t.header(path).await).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    for _ in 0..2 {
        let r = client()
            .get(t.gw.url("/preview/x"))
            .send()
            .await
            .expect("shadow");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        t.balance(&payer).await,
        before - 30_000,
        "three payments moved"
    );

    // What the ledger says.
    let ledger_path = t.gw.path("receipts.jsonl");
    let lines: Vec<Value> = std::fs::read_to_string(&ledger_path)
        .expect("ledger")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let settled: Vec<&Value> = lines.iter().filter(|l| l["event"] == "settled").collect();
    assert_eq!(settled.len(), 3);
    // Atomic units settled on the rules `keep` accepts.
    let settled_on = |keep: &dyn Fn(&Value) -> bool| -> u64 {
        settled
            .iter()
            .filter(|l| keep(l))
            .map(|l| {
                l["amount"]
                    .as_str()
                    .expect("amount")
                    .parse::<u64>()
                    .expect("n")
            })
            .sum()
    };
    let total = settled_on(&|_| true);
    let weather = settled_on(&|l| l["rule"] == "weather");
    let usd = |atomic: u64| format!("${}.{:02}", atomic / 1_000_000, atomic % 1_000_000 / 10_000);
    assert!(
        settled.iter().all(|l| l["audience"].is_string()),
        "{settled:?}"
    );

    // The page, as a browser renders it.
    let url = t.gw.admin_url("/revenue");
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&["--dump-dom"], &url)
    })
    .await
    .expect("join");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(by_id(&dom, "today-usd"), usd(total), "{dom}");
    assert_eq!(by_id(&dom, "week-usd"), usd(total));
    assert_eq!(by_id(&dom, "today-payments"), "3");
    assert_eq!(by_id(&dom, "week-payments"), "3");
    let w = row(&dom, "by-rule", "weather");
    assert_eq!(w[1], usd(weather));
    assert_eq!(w[2], "2");
    assert_eq!(row(&dom, "by-rule", "status")[2], "1");
    assert_eq!(row(&dom, "by-network", "eip155:31337")[2], "3");
    assert!(
        dom.contains(settled[2]["transaction"].as_str().expect("tx")),
        "latest receipt shown"
    );
    assert_eq!(row(&dom, "facilitators", "a")[1], "in rotation");
    let shadow = row(&dom, "shadow", "preview");
    assert_eq!(shadow[1], "$0.10", "two shadow requests at $0.05");
    assert!(shadow[2].starts_with("100000 "), "{shadow:?}");

    screenshot(&url, "1200,1600", 10_000).await;

    // The command line reads the same ledger.
    let cfg = t.gw.path("gateway.toml");
    let cfg = cfg.to_str().expect("utf-8");
    let (code, table, err) = gateway_cli(&["receipts", "-c", cfg], &[]);
    assert_eq!(code, 0, "{err}");
    let total_line = table
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("a total line");
    assert!(total_line.contains(&usd(total)), "{table}");
    assert!(
        total_line.contains(&format!("{total} eip155:31337 ")),
        "{table}"
    );
    let (code, csv, _) = gateway_cli(
        &[
            "receipts", "-c", cfg, "--format", "csv", "--rule", "weather",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(
        csv.lines().count(),
        1 + 2,
        "header and two weather lines: {csv}"
    );
    let (code, json, _) = gateway_cli(&["receipts", "-c", cfg, "--format", "json"], &[]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["summary"]["total"]["payments"], 3);
    assert_eq!(v["receipts"].as_array().expect("lines").len(), lines.len());
    let today = settled[0]["time"].as_str().expect("time")[..10].to_owned();
    let (_, json, _) = gateway_cli(
        &[
            "receipts", "-c", cfg, "--format", "json", "--since", &today, "--until", &today,
        ],
        &[],
    );
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["summary"]["total"]["payments"], 3);
    let (_, json, _) = gateway_cli(
        &[
            "receipts",
            "-c",
            cfg,
            "--format",
            "json",
            "--until",
            "2000-01-01",
        ],
        &[],
    );
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["summary"]["total"]["payments"], 0);
    let (code, _, err) = gateway_cli(&["receipts", "-c", cfg, "--since", "yesterday"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("--since \"yesterday\""), "{err}");
}
