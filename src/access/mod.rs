//! The access decision for a request on a rule that charges or prices by audience: who is
//! asking, what that audience pays, whether a pass or a crawler's price ceiling settles it, what
//! a shadow-mode rule would have done, and the pass issued after a settled payment. Works on
//! plain header maps; the proxy turns the outcome into a reply.

pub mod audience;
pub mod crawler_price;
pub mod pass;
pub mod siwx;
pub mod webbotauth;

use std::sync::Arc;

use http::HeaderMap;
use rust_decimal::Decimal;

use crate::metrics::Metrics;
use crate::payment::{self, Accepted, PaymentError, Stage};
use crate::router::Methods;
use crate::state::{StateError, StateStore};
use crate::x402::challenge::Priced;
use audience::Audience;
use crawler_price::CrawlerPriceError;
use pass::{Admitted, Claims, PassEngine, PassError, PassPolicy, ScopeKind};
use webbotauth::{BotAuth, BotAuthError, SignedRequest};

/// What a rule (or one of its audience prices) does with a matching request.
#[derive(Debug, Clone)]
pub enum RuleAction {
    Free,
    Block,
    Pay(Arc<Priced>),
}

impl RuleAction {
    /// Label used in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            RuleAction::Free => "free",
            RuleAction::Block => "block",
            RuleAction::Pay(_) => "pay",
        }
    }
}

/// What the access decision reads from one configuration generation.
#[derive(Debug, Clone, Copy)]
pub struct AccessEnv<'a> {
    /// The `[[crawler]]` list.
    pub crawlers: &'a audience::CrawlerSet,
    /// Agents whose Web Bot Auth signatures are accepted.
    pub web_bot_auth: &'a webbotauth::BotAuthConf,
    /// Pass keys (`None`: no `[passes]` section).
    pub passes: Option<&'a pass::PassKeys>,
    /// Largest payment header (shadow mode's local payment checks).
    pub max_payment_header_bytes: usize,
}

/// The rule a request matched, as the access decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct AccessRule<'a> {
    pub id: &'a str,
    pub action: &'a RuleAction,
    pub access: &'a RuleAccess,
}

/// A rule's audience prices, pass policy and mode.
#[derive(Debug, Clone, Default)]
pub struct RuleAccess {
    /// Prices per audience and operator (`None`: one price for everyone).
    pub audiences: Option<Arc<audience::AudiencePrices>>,
    /// The pass issued after a settled payment.
    pub pass: Option<Arc<PassPolicy>>,
    /// `mode = "shadow"`: decide and count, forward without charging.
    pub shadow: bool,
    /// Rules whose passes this rule honours whatever they were bought for (`*`: every rule);
    /// others only where they paid at least this rule's price.
    pub accept_passes_from: Vec<String>,
}

/// The request as the access decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a str,
    /// Normalized host (no port, lower case): what passes are bound to.
    pub host: &'a str,
    /// `@authority` for Web Bot Auth (host[:port] as requested).
    pub authority: &'a str,
    pub https: bool,
    /// Raw path and query as sent (Web Bot Auth `@path`, `@query`).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Canonical path (a resource pass's cookie `Path`).
    pub canonical: &'a str,
    /// Routing key of the canonical path (what resource and prefix passes match).
    pub key: &'a str,
}

/// Why a request is refused before any payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The rule blocks this audience (humans, agents).
    #[error("blocked for this audience by rule")]
    Blocked,
    /// A crawler or verified bot: blocked, or its price headers do not fit.
    #[error(transparent)]
    Crawler(#[from] CrawlerPriceError),
}

/// How a forwarded request got through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Free for this audience.
    Free,
    /// A valid pass.
    Pass,
    /// A shadow-mode rule: decided and counted, not enforced.
    Shadow,
}

/// What the proxy does next.
#[derive(Debug, Clone)]
pub enum Outcome {
    Forward(Forwarded),
    Refused(Refusal),
    /// Run the payment gate with this price. `pass_error`: a presented pass that failed (the
    /// 402's reason when no payment came with it).
    Charge {
        priced: Arc<Priced>,
        pass_error: Option<PassError>,
    },
}

/// Where a pass issued for this request applies.
#[derive(Debug, Clone)]
pub struct IssueTarget {
    pub policy: Arc<PassPolicy>,
    pub rule: String,
    pub host: String,
    pub key: String,
    pub canonical: String,
    pub https: bool,
}

/// What the access decision leaves for the later phases of a request.
#[derive(Debug, Default)]
pub struct AccessState {
    pub audience: Option<Audience>,
    /// Web Bot Auth outcome label, when the request was signed.
    pub bot_auth: Option<&'static str>,
    /// USD price quoted to a crawler or verified bot (`crawler-price`, `crawler-charged`).
    pub crawler_usd: Option<Decimal>,
    /// The pass that admitted the request.
    pub admitted: Option<Admitted>,
    /// A pass to issue once the payment settles.
    pub issue: Option<IssueTarget>,
    /// Shadow mode: what would have happened.
    pub shadow: Option<&'static str>,
}

impl AccessState {
    /// The audience kind label, or `""`.
    pub fn audience_label(&self) -> &'static str {
        self.audience.as_ref().map_or("", Audience::kind)
    }
}

/// The access engine shared by every request: Web Bot Auth state and pass state.
#[derive(Debug)]
pub struct Access {
    pub bot_auth: BotAuth,
    pub passes: PassEngine,
    /// Pass quotas and runtime revocations.
    state: Arc<dyn StateStore>,
    metrics: Arc<Metrics>,
}

impl Access {
    pub fn new(metrics: Arc<Metrics>, state: Arc<dyn StateStore>) -> Self {
        Access {
            bot_auth: BotAuth::default(),
            passes: PassEngine::default(),
            state,
            metrics,
        }
    }

    /// Revokes a pass at run time, until no pass signed now can still be valid.
    pub async fn revoke(&self, id: &str) -> Result<(), StateError> {
        self.state
            .revoke(id, pass::unix_now() + pass::MAX_TTL.as_secs())
            .await
    }

    /// Verifies a Web Bot Auth signature when the request carries one and agents are trusted.
    pub async fn verify_bot(
        &self,
        env: &AccessEnv<'_>,
        v: &RequestView<'_>,
    ) -> Option<Result<audience::VerifiedAgent, BotAuthError>> {
        if !webbotauth::is_signed(v.headers) {
            return None;
        }
        let req = SignedRequest {
            headers: v.headers,
            authority: v.authority,
            method: v.method,
            scheme: if v.https { "https" } else { "http" },
            path: v.path,
            query: v.query,
        };
        Some(if self.state.shared() {
            self.bot_auth
                .verify_shared(env.web_bot_auth, &req, &*self.state)
                .await
        } else {
            self.bot_auth.verify(env.web_bot_auth, &req).await
        })
    }

    /// Classifies the request (verifying a signature first when there is one), counting the
    /// audience, the Web Bot Auth outcome and spoofed crawler claims.
    pub async fn classify(
        &self,
        env: &AccessEnv<'_>,
        v: &RequestView<'_>,
        state: &mut AccessState,
    ) -> Audience {
        let verified = match self.verify_bot(env, v).await {
            None => None,
            Some(Ok(agent)) => {
                state.bot_auth = Some("verified");
                self.metrics
                    .web_bot_auth
                    .with_label_values(&["verified"])
                    .inc();
                Some(agent)
            }
            Some(Err(e)) => {
                state.bot_auth = Some(e.reason());
                self.metrics
                    .web_bot_auth
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::debug!(reason = e.reason(), error = %e, "Web Bot Auth signature not accepted");
                None
            }
        };
        let a = audience::classify(v.headers, env.crawlers, verified.as_ref());
        self.metrics
            .audience_requests
            .with_label_values(&[a.kind(), a.purpose_label()])
            .inc();
        if let Audience::Agent { spoofed: Some(c) } = &a {
            self.metrics
                .spoofed_crawlers
                .with_label_values(&[c.name.as_str()])
                .inc();
            tracing::info!(crawler = %c.name, operator = %c.operator, bot_auth = state.bot_auth.unwrap_or("unsigned"), "user agent claims a signing crawler without its signature: treated as an agent");
        }
        a
    }

    fn pass_metric(&self, outcome: &'static str) {
        self.metrics.passes.with_label_values(&[outcome]).inc();
    }

    /// Checks presented passes against a request that costs `priced`; `consume` counts the
    /// request against the quota.
    async fn check_pass(
        &self,
        env: &AccessEnv<'_>,
        rule: AccessRule<'_>,
        priced: &Priced,
        v: &RequestView<'_>,
        consume: bool,
    ) -> Option<Result<Admitted, PassError>> {
        let keys = env.passes?;
        let tokens = pass::presented(v.headers, &keys.cookie);
        if tokens.is_empty() {
            return None;
        }
        let target = pass::Target {
            host: v.host,
            rule: rule.id,
            key: v.key,
            method: Methods::bit(v.method),
            price: &priced.price_points,
            honours: &rule.access.accept_passes_from,
        };
        Some(
            self.passes
                .admit(keys, self.state.as_ref(), &tokens, &target, consume)
                .await,
        )
    }

    /// Decides a request on a rule that [`Rule::needs_access`].
    pub async fn decide(
        &self,
        env: &AccessEnv<'_>,
        rule: AccessRule<'_>,
        v: &RequestView<'_>,
        state: &mut AccessState,
    ) -> Outcome {
        let audience = self.classify(env, v, state).await;
        let action = match &rule.access.audiences {
            Some(a) => a.resolve(rule.action, &audience),
            None => rule.action,
        };
        let bot = audience.is_bot();
        state.audience = Some(audience);
        if rule.access.shadow {
            let decision = self.shadow(env, rule, action, bot, v, state).await;
            state.shadow = Some(decision);
            return Outcome::Forward(Forwarded::Shadow);
        }
        let priced = match action {
            RuleAction::Free => return Outcome::Forward(Forwarded::Free),
            RuleAction::Block if bot => {
                return Outcome::Refused(Refusal::Crawler(CrawlerPriceError::Forbidden));
            }
            RuleAction::Block => return Outcome::Refused(Refusal::Blocked),
            RuleAction::Pay(p) => p,
        };
        state.crawler_usd = if bot { priced.usd } else { None };
        let ceiling = match state.crawler_usd {
            Some(_) => match crawler_price::ceiling(v.headers) {
                Ok(c) => c,
                Err(e) => return Outcome::Refused(e.into()),
            },
            None => crawler_price::Ceiling::None,
        };
        let mut pass_error = None;
        match self.check_pass(env, rule, priced, v, true).await {
            Some(Ok(a)) => {
                self.pass_metric("accepted");
                state.admitted = Some(a);
                return Outcome::Forward(Forwarded::Pass);
            }
            Some(Err(e)) => {
                self.pass_metric(e.reason());
                pass_error = Some(e);
            }
            None => {}
        }
        if let Some(usd) = state.crawler_usd
            && let Err(e) = crawler_price::check(usd, ceiling)
        {
            return Outcome::Refused(e.into());
        }
        if let Some(policy) = &rule.access.pass {
            state.issue = Some(IssueTarget {
                policy: policy.clone(),
                rule: rule.id.to_owned(),
                host: v.host.to_owned(),
                key: v.key.to_owned(),
                canonical: v.canonical.to_owned(),
                https: v.https,
            });
        }
        Outcome::Charge {
            priced: priced.clone(),
            pass_error,
        }
    }

    /// What an enforcing rule would have done, counted and logged; nothing is charged,
    /// reserved or consumed.
    async fn shadow(
        &self,
        env: &AccessEnv<'_>,
        rule: AccessRule<'_>,
        action: &RuleAction,
        bot: bool,
        v: &RequestView<'_>,
        state: &mut AccessState,
    ) -> &'static str {
        let (decision, charged) = match action {
            RuleAction::Free => ("free", None),
            RuleAction::Block => ("block", None),
            RuleAction::Pay(priced) => {
                let usd = if bot { priced.usd } else { None };
                let refused = usd.is_some_and(|u| {
                    crawler_price::ceiling(v.headers)
                        .and_then(|c| crawler_price::check(u, c))
                        .is_err()
                });
                if refused {
                    ("crawler_refused", None)
                } else if let Some(Ok(_)) = self.check_pass(env, rule, priced, v, false).await {
                    ("pass", None)
                } else {
                    match payment::check_locally(priced, v.headers, env.max_payment_header_bytes) {
                        Ok(_) => ("paid", Some(priced)),
                        Err(PaymentError::MissingPayment) => ("charge", Some(priced)),
                        Err(_) => ("rejected", Some(priced)),
                    }
                }
            }
        };
        self.metrics
            .shadow_decisions
            .with_label_values(&[rule.id, decision])
            .inc();
        let offer = charged.and_then(|p| p.offers.first());
        if let Some(o) = offer
            && let Ok(amount) = o.requirements.amount.parse::<u64>()
        {
            self.metrics
                .shadow_amount
                .with_label_values(&[
                    rule.id,
                    o.requirements.network.as_str(),
                    o.requirements.asset.as_str(),
                ])
                .inc_by(amount);
        }
        tracing::info!(
            target: "shadow",
            rule = %rule.id,
            audience = state.audience_label(),
            decision,
            amount = offer.map_or("", |o| o.requirements.amount.as_str()),
            "shadow mode: forwarded without charging"
        );
        decision
    }

    /// Headers for a paid response: the pass (cookie and header) once the payment settled, and
    /// `crawler-charged` for bots.
    pub fn on_paid_response(
        &self,
        env: &AccessEnv<'_>,
        state: &AccessState,
        a: &Accepted,
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if a.stage != Stage::Settled {
            return out;
        }
        if let Some(usd) = state.crawler_usd {
            out.push((crawler_price::CHARGED, crawler_price::format_usd(usd)));
        }
        let (Some(t), Some(keys)) = (&state.issue, env.passes) else {
            return out;
        };
        if a.metered() {
            // A metered charge (perhaps nothing) buys that one response, not a pass.
            return out;
        }
        let now = pass::unix_now();
        let p = &t.policy;
        let claims = Claims {
            id: pass::new_id(),
            rule: t.rule.clone(),
            host: t.host.clone(),
            scope: p.scope,
            path: match p.scope {
                ScopeKind::Resource => t.key.clone(),
                ScopeKind::Prefix => p.prefix.clone().unwrap_or_default(),
                ScopeKind::Rule => String::new(),
            },
            methods: p.methods.0,
            iat: now,
            exp: now + p.ttl.as_secs(),
            max_requests: p.max_requests.unwrap_or(0),
            payer: a.payer.clone(),
            paid: a
                .offer
                .requirements
                .amount
                .parse()
                .ok()
                .map(|amount| pass::Paid {
                    network: a.offer.requirements.network.clone(),
                    asset: a.offer.requirements.asset.to_ascii_lowercase(),
                    amount,
                }),
        };
        let Some(token) = pass::mint(keys, &claims) else {
            tracing::error!(rule = %t.rule, "cannot issue a pass: no signing key");
            return out;
        };
        let path = match p.scope {
            ScopeKind::Resource => t.canonical.as_str(),
            _ => p.cookie_path.as_str(),
        };
        out.push((
            "set-cookie",
            pass::set_cookie(&keys.cookie, &token, path, p.ttl.as_secs(), t.https),
        ));
        out.push((pass::HEADER, token));
        self.pass_metric("issued");
        tracing::info!(pass = %claims.id, rule = %t.rule, payer = %a.payer, expires = claims.exp, max_requests = claims.max_requests, "pass issued");
        out
    }

    /// Headers for a response admitted by a pass.
    pub fn on_pass_response(&self, state: &AccessState) -> Vec<(&'static str, String)> {
        match state.admitted.as_ref().and_then(|a| a.remaining) {
            Some(n) => vec![(pass::HEADER_REMAINING, n.to_string())],
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
