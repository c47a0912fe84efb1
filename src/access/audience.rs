//! Who is asking: classifies a request as a human in a browser, a known AI crawler (by user
//! agent, from the `[[crawler]]` list), a verified bot (Web Bot Auth), or another agent, and
//! resolves a rule's price for that audience. Pure: no I/O, no Pingora types.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use http::HeaderMap;

use super::RuleAction;

/// What a crawler's fetches are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Collecting content to train models.
    Training,
    /// Indexing for search and answer engines.
    Search,
    /// Fetching a page because a user asked for it right now.
    User,
}

impl Purpose {
    pub fn label(self) -> &'static str {
        match self {
            Purpose::Training => "training",
            Purpose::Search => "search",
            Purpose::User => "user",
        }
    }
}

/// One known crawler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crawler {
    pub name: String,
    pub operator: String,
    pub purpose: Purpose,
    /// Case-insensitive substring of the User-Agent; `None` for robots.txt-only tokens
    /// (Google-Extended, Applebot-Extended), which never match a request.
    pub user_agent: Option<String>,
    /// Origin of the operator's Web Bot Auth key directory. When set, a request claiming this
    /// crawler must carry a valid signature from that agent, or it is a spoofed claim.
    pub signature_agent: Option<String>,
    /// `file:line:col` of its `[[crawler]]`.
    pub origin: String,
}

/// The compiled crawler list: one Aho-Corasick automaton over every user-agent token.
#[derive(Debug, Default)]
pub struct CrawlerSet {
    pub crawlers: Vec<Arc<Crawler>>,
    matcher: Option<AhoCorasick>,
    /// Pattern index → crawler index.
    by_pattern: Vec<usize>,
}

impl CrawlerSet {
    /// Builds the automaton (leftmost-longest, ASCII case-insensitive).
    pub fn new(crawlers: Vec<Crawler>) -> Result<Self, String> {
        let crawlers: Vec<Arc<Crawler>> = crawlers.into_iter().map(Arc::new).collect();
        let mut patterns = Vec::new();
        let mut by_pattern = Vec::new();
        for (i, c) in crawlers.iter().enumerate() {
            if let Some(ua) = &c.user_agent {
                patterns.push(ua.clone());
                by_pattern.push(i);
            }
        }
        let matcher = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| e.to_string())?,
            )
        };
        Ok(CrawlerSet {
            crawlers,
            matcher,
            by_pattern,
        })
    }

    /// The crawler a User-Agent names, if any (the leftmost, then longest, token).
    pub fn match_user_agent(&self, ua: &str) -> Option<&Arc<Crawler>> {
        let m = self.matcher.as_ref()?.find(ua)?;
        self.by_pattern
            .get(m.pattern().as_usize())
            .and_then(|&i| self.crawlers.get(i))
    }

    pub fn len(&self) -> usize {
        self.crawlers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.crawlers.is_empty()
    }
}

/// A bot whose Web Bot Auth signature verified against a trusted agent's key directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAgent {
    /// The trusted agent's origin (`https://chatgpt.com`).
    pub origin: Arc<str>,
    /// The operator name configured for it.
    pub operator: Arc<str>,
    /// The purpose configured for it, if any.
    pub purpose: Option<Purpose>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// A browser navigation: Accept has text/html and the User-Agent says Mozilla.
    Human,
    /// A known crawler by its User-Agent (not verified: user agents can be forged).
    Crawler(Arc<Crawler>),
    /// A bot that proved who it is with a Web Bot Auth signature.
    Verified {
        operator: Arc<str>,
        purpose: Option<Purpose>,
        agent: Arc<str>,
    },
    /// Anything else. `spoofed` is the crawler it claimed to be without the signature that
    /// crawler always carries.
    Agent { spoofed: Option<Arc<Crawler>> },
}

impl Audience {
    /// Low-cardinality kind label (metrics, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Audience::Human => "human",
            Audience::Crawler(_) => "crawler",
            Audience::Verified { .. } => "verified",
            Audience::Agent { .. } => "agent",
        }
    }

    /// The purpose label, or `""`.
    pub fn purpose_label(&self) -> &'static str {
        match self {
            Audience::Crawler(c) => c.purpose.label(),
            Audience::Verified {
                purpose: Some(p), ..
            } => p.label(),
            _ => "",
        }
    }

    /// Crawlers and verified bots get pay-per-crawl headers.
    pub fn is_bot(&self) -> bool {
        matches!(self, Audience::Crawler(_) | Audience::Verified { .. })
    }

    /// One line for logs and `explain`: `crawler GPTBot (OpenAI, training)`.
    pub fn describe(&self) -> String {
        match self {
            Audience::Human => "human".into(),
            Audience::Crawler(c) => {
                format!("crawler {} ({}, {})", c.name, c.operator, c.purpose.label())
            }
            Audience::Verified {
                operator,
                purpose,
                agent,
            } => format!(
                "verified {operator} via {agent}{}",
                purpose.map_or(String::new(), |p| format!(" ({})", p.label()))
            ),
            Audience::Agent { spoofed: Some(c) } => {
                format!("agent (spoofed {}: no valid signature)", c.name)
            }
            Audience::Agent { spoofed: None } => "agent".into(),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A browser navigation: it accepts HTML and says Mozilla (the reference servers' test).
pub fn looks_like_browser(headers: &HeaderMap) -> bool {
    let accepts_html = headers
        .get_all("accept")
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")));
    accepts_html && header(headers, "user-agent").is_some_and(|ua| ua.contains("Mozilla"))
}

/// Classifies a request. `verified` is the outcome of Web Bot Auth, when the request carried a
/// valid signature from a trusted agent. A verified signature outranks the User-Agent; a
/// User-Agent claiming a crawler that always signs, without that crawler's signature, is a
/// spoofed agent.
pub fn classify(
    headers: &HeaderMap,
    crawlers: &CrawlerSet,
    verified: Option<&VerifiedAgent>,
) -> Audience {
    let claimed = header(headers, "user-agent").and_then(|ua| crawlers.match_user_agent(ua));
    if let Some(v) = verified {
        // The claimed crawler's purpose counts when it belongs to the agent that signed.
        let purpose = claimed
            .filter(|c| {
                c.signature_agent.as_deref() == Some(&*v.origin)
                    || c.operator.eq_ignore_ascii_case(&v.operator)
            })
            .map(|c| c.purpose)
            .or(v.purpose);
        return Audience::Verified {
            operator: v.operator.clone(),
            purpose,
            agent: v.origin.clone(),
        };
    }
    if let Some(c) = claimed {
        if c.signature_agent.is_some() {
            return Audience::Agent {
                spoofed: Some(c.clone()),
            };
        }
        return Audience::Crawler(c.clone());
    }
    if looks_like_browser(headers) {
        Audience::Human
    } else {
        Audience::Agent { spoofed: None }
    }
}

/// A rule's prices per audience. `None` falls through to the next step.
#[derive(Debug, Clone, Default)]
pub struct AudiencePrices {
    pub human: Option<RuleAction>,
    pub training: Option<RuleAction>,
    pub search: Option<RuleAction>,
    pub user: Option<RuleAction>,
    pub agent: Option<RuleAction>,
    /// Any verified bot.
    pub verified: Option<RuleAction>,
    /// By verified operator name.
    pub operators: Vec<(String, RuleAction)>,
}

impl AudiencePrices {
    fn purpose(&self, p: Option<Purpose>) -> Option<&RuleAction> {
        match p? {
            Purpose::Training => self.training.as_ref(),
            Purpose::Search => self.search.as_ref(),
            Purpose::User => self.user.as_ref(),
        }
    }

    /// The action for an audience: verified → operators[op] → verified → purpose → default;
    /// crawler → purpose → default; human → human → default; agent → agent → default.
    pub fn resolve<'a>(&'a self, default: &'a RuleAction, a: &Audience) -> &'a RuleAction {
        let found = match a {
            Audience::Verified {
                operator, purpose, ..
            } => self
                .operators
                .iter()
                .find(|(op, _)| op.as_str() == &**operator)
                .map(|(_, act)| act)
                .or(self.verified.as_ref())
                .or_else(|| self.purpose(*purpose)),
            Audience::Crawler(c) => self.purpose(Some(c.purpose)),
            Audience::Human => self.human.as_ref(),
            Audience::Agent { .. } => self.agent.as_ref(),
        };
        found.unwrap_or(default)
    }

    /// Whether any audience can be charged.
    pub fn any_priced(&self) -> bool {
        [
            &self.human,
            &self.training,
            &self.search,
            &self.user,
            &self.agent,
            &self.verified,
        ]
        .into_iter()
        .flatten()
        .chain(self.operators.iter().map(|(_, a)| a))
        .any(|a| matches!(a, RuleAction::Pay(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::challenge::Priced;

    fn crawler(name: &str, op: &str, p: Purpose, ua: Option<&str>, sig: Option<&str>) -> Crawler {
        Crawler {
            name: name.into(),
            operator: op.into(),
            purpose: p,
            user_agent: ua.map(Into::into),
            signature_agent: sig.map(Into::into),
            origin: "t".into(),
        }
    }

    fn set() -> CrawlerSet {
        CrawlerSet::new(vec![
            crawler("GPTBot", "OpenAI", Purpose::Training, Some("GPTBot"), None),
            crawler(
                "ChatGPT-User",
                "OpenAI",
                Purpose::User,
                Some("ChatGPT-User"),
                Some("https://chatgpt.com"),
            ),
            crawler(
                "OAI-SearchBot",
                "OpenAI",
                Purpose::Search,
                Some("OAI-SearchBot"),
                None,
            ),
            crawler(
                "Googlebot",
                "Google",
                Purpose::Search,
                Some("Googlebot"),
                None,
            ),
            crawler(
                "Googlebot-Image",
                "Google",
                Purpose::Search,
                Some("Googlebot-Image"),
                None,
            ),
            crawler("Google-Extended", "Google", Purpose::Training, None, None),
        ])
        .expect("set")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn user_agents_match_case_insensitively_and_longest_first() {
        let s = set();
        let m = |ua: &str| s.match_user_agent(ua).map(|c| c.name.clone());
        assert_eq!(
            m(
                "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.1; +https://openai.com/gptbot"
            ),
            Some("GPTBot".into())
        );
        assert_eq!(m("gptbot/1.0"), Some("GPTBot".into()));
        assert_eq!(m("Googlebot-Image/1.0"), Some("Googlebot-Image".into()));
        assert_eq!(
            m("Mozilla/5.0 (compatible; Googlebot/2.1)"),
            Some("Googlebot".into())
        );
        assert_eq!(m("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"), None);
        // A robots.txt-only token never matches a request.
        assert_eq!(m("Google-Extended"), None);
    }

    #[test]
    fn classification_order() {
        let s = set();
        let browser = headers(&[
            ("accept", "text/html,*/*"),
            ("user-agent", "Mozilla/5.0 (X11) Firefox/128.0"),
        ]);
        assert_eq!(classify(&browser, &s, None), Audience::Human);
        // A crawler's UA with Mozilla and an HTML Accept is still the crawler.
        let gpt = headers(&[
            ("accept", "text/html"),
            ("user-agent", "Mozilla/5.0 (compatible; GPTBot/1.1)"),
        ]);
        assert!(matches!(classify(&gpt, &s, None), Audience::Crawler(c) if c.name == "GPTBot"));
        assert_eq!(
            classify(&headers(&[("user-agent", "curl/8")]), &s, None),
            Audience::Agent { spoofed: None }
        );
        assert_eq!(
            classify(&HeaderMap::new(), &s, None),
            Audience::Agent { spoofed: None }
        );
        // Claims a crawler that always signs, without a signature: spoofed.
        let claim = headers(&[("user-agent", "ChatGPT-User/1.0")]);
        match classify(&claim, &s, None) {
            Audience::Agent { spoofed: Some(c) } => assert_eq!(c.name, "ChatGPT-User"),
            other => panic!("{other:?}"),
        }
        // With that agent's signature: verified, with the crawler's purpose.
        let v = VerifiedAgent {
            origin: "https://chatgpt.com".into(),
            operator: "OpenAI".into(),
            purpose: None,
        };
        assert_eq!(
            classify(&claim, &s, Some(&v)),
            Audience::Verified {
                operator: "OpenAI".into(),
                purpose: Some(Purpose::User),
                agent: "https://chatgpt.com".into()
            }
        );
        // A signed browser-looking request is the verified bot, not a human.
        let v2 = VerifiedAgent {
            purpose: Some(Purpose::User),
            ..v.clone()
        };
        assert!(matches!(
            classify(&browser, &s, Some(&v2)),
            Audience::Verified {
                purpose: Some(Purpose::User),
                ..
            }
        ));
    }

    #[test]
    fn resolution_order() {
        let priced = |amount: u128| {
            RuleAction::Pay(Arc::new(Priced::new(
                Vec::new(),
                format!("{amount}"),
                String::new(),
            )))
        };
        let name = |a: &RuleAction| match a {
            RuleAction::Pay(p) => p.description.clone(),
            other => other.name().to_owned(),
        };
        let prices = AudiencePrices {
            human: Some(RuleAction::Free),
            search: Some(RuleAction::Free),
            training: Some(priced(5000)),
            agent: Some(RuleAction::Block),
            operators: vec![("OpenAI".into(), priced(2000))],
            ..Default::default()
        };
        let default = priced(10000);
        let s = set();
        let gpt = Audience::Crawler(s.crawlers[0].clone());
        let search = Audience::Crawler(s.crawlers[2].clone());
        let openai = Audience::Verified {
            operator: "OpenAI".into(),
            purpose: Some(Purpose::Training),
            agent: "https://chatgpt.com".into(),
        };
        let other_verified = Audience::Verified {
            operator: "Other".into(),
            purpose: Some(Purpose::Training),
            agent: "https://other.example".into(),
        };
        let unknown_purpose = Audience::Verified {
            operator: "Other".into(),
            purpose: None,
            agent: "https://other.example".into(),
        };
        assert_eq!(name(prices.resolve(&default, &Audience::Human)), "free");
        assert_eq!(name(prices.resolve(&default, &gpt)), "5000");
        assert_eq!(name(prices.resolve(&default, &search)), "free");
        assert_eq!(name(prices.resolve(&default, &openai)), "2000");
        assert_eq!(name(prices.resolve(&default, &other_verified)), "5000");
        assert_eq!(name(prices.resolve(&default, &unknown_purpose)), "10000");
        assert_eq!(
            name(prices.resolve(&default, &Audience::Agent { spoofed: None })),
            "block"
        );
        let with_verified = AudiencePrices {
            verified: Some(RuleAction::Free),
            ..prices.clone()
        };
        assert_eq!(name(with_verified.resolve(&default, &openai)), "2000");
        assert_eq!(
            name(with_verified.resolve(&default, &other_verified)),
            "free"
        );
        assert!(prices.any_priced());
        assert!(!AudiencePrices::default().any_priced());
    }
}
