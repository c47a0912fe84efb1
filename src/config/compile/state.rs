//! The `[state]` section: which store remembers what outlives a request, how to reach it, and
//! this replica's name.

use std::time::Duration;

use crate::config::Reporter;
use crate::config::state_file::StateSection;
use crate::state::{Backend, RedisConf, StateConf};

use super::shared::secret;

const URL_SCHEMES: [&str; 3] = ["redis://", "rediss://", "redis+unix://"];

/// Compiles `[state]`, recording every problem.
pub(super) fn state(rep: &mut Reporter, cfg: usize, s: &StateSection) -> StateConf {
    let replica_id = match &s.replica_id {
        Some(id) => {
            let v = id.get_ref().trim();
            if v.is_empty()
                || v.len() > 64
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            {
                rep.at(
                    cfg,
                    id.span(),
                    "state.replica_id",
                    "must be 1 to 64 letters, digits, `-`, `_`, `.` or `:`",
                );
            }
            v.to_owned()
        }
        None => default_replica_id(),
    };
    let backend = match s.backend.get_ref().as_str() {
        "memory" => {
            if let Some(url) = &s.url {
                rep.at(
                    cfg,
                    url.span(),
                    "state.url",
                    "only the `redis` backend takes a url",
                );
            }
            Backend::Memory
        }
        "redis" => redis(rep, cfg, s).map_or(Backend::Memory, Backend::Redis),
        other => {
            rep.at(
                cfg,
                s.backend.span(),
                "state.backend",
                format!("unknown backend `{other}`, expected `memory` or `redis`"),
            );
            Backend::Memory
        }
    };
    StateConf {
        backend,
        on_unavailable: s.on_unavailable,
        replica_id,
    }
}

fn redis(rep: &mut Reporter, cfg: usize, s: &StateSection) -> Option<RedisConf> {
    let Some(url) = &s.url else {
        rep.at(
            cfg,
            s.backend.span(),
            "state.url",
            "the `redis` backend needs a url (`redis://host:6379`, `rediss://…`, `redis+unix:///path`)",
        );
        return None;
    };
    let mut ok = true;
    let check_url = |rep: &mut Reporter, v: &toml::Spanned<String>, field: &str| {
        let value = secret(rep, cfg, v, field)?;
        let text = value.expose();
        if !URL_SCHEMES.iter().any(|p| text.starts_with(p)) {
            rep.at(
                cfg,
                v.span(),
                field,
                format!(
                    "`{}` is not a redis://, rediss:// or redis+unix:// url",
                    value.redacted_url()
                ),
            );
            return None;
        }
        if redis::Client::open(text).is_err() {
            rep.at(
                cfg,
                v.span(),
                field,
                format!("`{}` is not a valid Redis url", value.redacted_url()),
            );
            return None;
        }
        Some(value)
    };
    let first = check_url(rep, url, "state.url");
    let mut cluster = Vec::new();
    for node in &s.cluster {
        match check_url(rep, node, "state.cluster") {
            Some(v) => cluster.push(v),
            None => ok = false,
        }
    }
    let ms = |rep: &mut Reporter, v: &toml::Spanned<u64>, field: &str, max: u64| {
        if *v.get_ref() == 0 || *v.get_ref() > max {
            rep.at(cfg, v.span(), field, format!("must be between 1 and {max}"));
        }
        Duration::from_millis(*v.get_ref())
    };
    let connect_timeout = ms(
        rep,
        &s.connect_timeout_ms,
        "state.connect_timeout_ms",
        60_000,
    );
    let command_timeout = ms(
        rep,
        &s.command_timeout_ms,
        "state.command_timeout_ms",
        10_000,
    );
    let pool_size = *s.pool_size.get_ref();
    if pool_size == 0 || pool_size > 64 {
        rep.at(
            cfg,
            s.pool_size.span(),
            "state.pool_size",
            "must be between 1 and 64",
        );
    }
    let prefix = s.key_prefix.get_ref();
    if prefix.len() > 64
        || prefix
            .chars()
            .any(|c| c.is_whitespace() || c == '{' || c == '}')
    {
        rep.at(
            cfg,
            s.key_prefix.span(),
            "state.key_prefix",
            "must be at most 64 characters without spaces or braces",
        );
    }
    Some(RedisConf {
        url: first?,
        cluster: if ok { cluster } else { return None },
        key_prefix: prefix.clone(),
        connect_timeout,
        command_timeout,
        pool_size,
    })
}

/// The host name, or `gateway` when it cannot be read.
fn default_replica_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into())
}
