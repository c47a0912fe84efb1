//! Agents: `[web_bot_auth]` trusted agents (the origins whose key directories are fetched) and
//! the `[[crawler]]` list from every rules file, each problem recorded with its location.

use std::collections::HashMap;
use std::time::Duration;

use crate::access::audience::{Crawler, CrawlerSet};
use crate::access::webbotauth::{self, BotAuthConf, TrustedAgent};
use crate::config::access_file::WebBotAuthSection;
use crate::config::{ParsedCrawler, Reporter};

/// `[web_bot_auth]` → trusted agents. Only `https://` origins, or `http://` for loopback hosts
/// listed explicitly; nothing else is ever fetched.
pub(super) fn web_bot_auth(rep: &mut Reporter, cfg: usize, s: &WebBotAuthSection) -> BotAuthConf {
    let mut agents = Vec::new();
    let mut seen: HashMap<String, std::ops::Range<usize>> = HashMap::new();
    for a in &s.agents {
        let raw = a.origin.get_ref();
        let Some(origin) = webbotauth::origin_of(raw) else {
            rep.at(
                cfg,
                a.origin.span(),
                "web_bot_auth.agents.origin",
                format!("`{raw}` is not an http(s) origin"),
            );
            continue;
        };
        let path_ok = raw
            .trim()
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.path(), "" | "/") && u.query().is_none());
        if !path_ok {
            rep.at(
                cfg,
                a.origin.span(),
                "web_bot_auth.agents.origin",
                "give the origin only (`https://host`); set `directory_path` for another path",
            );
            continue;
        }
        if origin.starts_with("http://") && !webbotauth::is_loopback_origin(&origin) {
            rep.at(
                cfg,
                a.origin.span(),
                "web_bot_auth.agents.origin",
                "key directories are fetched over https (http:// only for loopback hosts)",
            );
            continue;
        }
        if let Some(first) = seen.insert(origin.clone(), a.origin.span()) {
            let at = rep.where_is(cfg, first);
            rep.at(
                cfg,
                a.origin.span(),
                "web_bot_auth.agents.origin",
                format!("duplicate agent, first at {at}"),
            );
            continue;
        }
        if a.operator.get_ref().trim().is_empty() {
            rep.at(
                cfg,
                a.operator.span(),
                "web_bot_auth.agents.operator",
                "must not be empty",
            );
            continue;
        }
        let path = match &a.directory_path {
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().contains(['?', '#']) => {
                rep.at(
                    cfg,
                    p.span(),
                    "web_bot_auth.agents.directory_path",
                    "must be a path starting with '/'",
                );
                continue;
            }
            Some(p) => p.get_ref().clone(),
            None => webbotauth::DIRECTORY_PATH.to_owned(),
        };
        agents.push(TrustedAgent {
            directory: format!("{origin}{path}"),
            origin: origin.into(),
            operator: a.operator.get_ref().trim().into(),
            purpose: a.purpose.as_ref().map(|p| *p.get_ref()),
        });
    }
    let path = rep.sources[cfg].path.clone();
    if s.min_cache_seconds == 0 || s.min_cache_seconds > s.max_cache_seconds {
        rep.file(
            &path,
            "web_bot_auth.min_cache_seconds",
            "must be at least 1 and at most max_cache_seconds",
        );
    }
    if s.max_validity_seconds == 0 {
        rep.file(
            &path,
            "web_bot_auth.max_validity_seconds",
            "must be at least 1",
        );
    }
    BotAuthConf {
        agents,
        min_cache: Duration::from_secs(s.min_cache_seconds.max(1)),
        max_cache: Duration::from_secs(s.max_cache_seconds.max(s.min_cache_seconds.max(1))),
        default_cache: Duration::from_secs(s.default_cache_seconds),
        max_validity: s.max_validity_seconds,
        skew: s.clock_skew_seconds,
        fetch_timeout: Duration::from_millis(s.fetch_timeout_ms.max(1)),
    }
}

/// `[[crawler]]` tables from every rules file → the matcher.
pub(super) fn crawlers(rep: &mut Reporter, list: &[ParsedCrawler]) -> CrawlerSet {
    let mut out = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut tokens: HashMap<String, String> = HashMap::new();
    for pc in list {
        let d = &pc.def;
        let here = rep.where_is(pc.src, d.name.span());
        let name = d.name.get_ref().trim();
        if name.is_empty() {
            rep.at(pc.src, d.name.span(), "crawler.name", "must not be empty");
            continue;
        }
        if let Some(first) = names.insert(name.to_ascii_lowercase(), here.clone()) {
            rep.at(
                pc.src,
                d.name.span(),
                "crawler.name",
                format!("duplicate crawler `{name}`, first at {first}"),
            );
            continue;
        }
        if d.operator.get_ref().trim().is_empty() {
            rep.at(
                pc.src,
                d.operator.span(),
                "crawler.operator",
                "must not be empty",
            );
            continue;
        }
        let user_agent = match &d.user_agent {
            Some(ua) if ua.get_ref().trim().len() < 3 => {
                rep.at(
                    pc.src,
                    ua.span(),
                    "crawler.user_agent",
                    "needs at least 3 characters (it matches as a substring)",
                );
                continue;
            }
            Some(ua) => {
                let token = ua.get_ref().trim().to_owned();
                if let Some(first) = tokens.insert(token.to_ascii_lowercase(), here.clone()) {
                    rep.at(
                        pc.src,
                        ua.span(),
                        "crawler.user_agent",
                        format!(
                            "user agent `{token}` is already matched by the crawler at {first}"
                        ),
                    );
                    continue;
                }
                Some(token)
            }
            None => None,
        };
        let signature_agent = match &d.signature_agent {
            Some(s) => match webbotauth::origin_of(s.get_ref()) {
                Some(o) => Some(o),
                None => {
                    rep.at(
                        pc.src,
                        s.span(),
                        "crawler.signature_agent",
                        "must be the http(s) origin of the operator's key directory",
                    );
                    continue;
                }
            },
            None => None,
        };
        out.push(Crawler {
            name: name.to_owned(),
            operator: d.operator.get_ref().trim().to_owned(),
            purpose: *d.purpose.get_ref(),
            user_agent,
            signature_agent,
            origin: here,
        });
    }
    match CrawlerSet::new(out) {
        Ok(s) => s,
        Err(e) => {
            if let Some(first) = list.first() {
                rep.at(first.src, first.span.clone(), "crawler", e);
            }
            CrawlerSet::default()
        }
    }
}
