//! Warnings about a valid configuration that probably does not do what its operator wants:
//! pure checks over a compiled snapshot, printed by `check` and logged on every load.

use crate::access::RuleAction;
use crate::payment::Settlement;
use crate::router::Methods;
use crate::snapshot::{Rule, Snapshot, Unmatched};

/// The `pay_to` of the shipped examples (gateway.toml.example, deploy/): a warning when a
/// configuration still uses it.
pub const EXAMPLE_PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// Whether `addr` is [`EXAMPLE_PAY_TO`] (in any letter case).
pub fn is_example_pay_to(addr: &str) -> bool {
    addr.eq_ignore_ascii_case(EXAMPLE_PAY_TO)
}

/// Methods that may change state at the origin.
const UNSAFE_METHODS: [&str; 4] = ["POST", "PUT", "DELETE", "PATCH"];

/// Every warning for `snap`, as `file:line:col: field: message`.
pub fn warnings(snap: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let charged =
        |r: &&Rule| matches!(r.action, RuleAction::Pay(_)) || r.access.audiences.is_some();
    if snap.hosts.is_empty()
        && snap.unmatched == Unmatched::Forward
        && let Some(r) = snap.rules.iter().filter(charged).find(|r| r.host != "*")
    {
        out.push(format!(
            "{}: rule.host: rule `{}` prices only host `{}`, but requests no rule matches are \
             forwarded and `[server] hosts` is not set: the same path under another Host reaches \
             the origin free. Set `[server] hosts` or `[rules] unmatched = \"block\"`",
            r.origin, r.id, r.host
        ));
    }
    for r in snap.rules.iter().filter(charged) {
        if r.access.shadow || r.payment.settlement != Settlement::After {
            continue;
        }
        // A rule without `methods` takes every method, the state-changing ones included.
        let unsafe_methods = if r.methods == Methods::ANY {
            "every method (POST, PUT, DELETE and PATCH included)".to_owned()
        } else {
            r.methods
                .names()
                .into_iter()
                .filter(|m| UNSAFE_METHODS.contains(m))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !unsafe_methods.is_empty() {
            out.push(format!(
                "{}: rule.settlement: rule `{}` is priced for {unsafe_methods} with settlement = \
                 \"after\": the origin runs before the money moves, and a payer can cancel the \
                 authorization after it was verified, so a side effect may happen unpaid. Use \
                 settlement = \"before\" for origins with side effects, or name the safe \
                 `methods` it sells (others then fall to other rules or `[rules] unmatched`)",
                r.origin, r.id,
            ));
        }
    }
    out
}
