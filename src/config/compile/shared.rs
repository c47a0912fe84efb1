//! Small checks shared by every part of the compiler: addresses, timeouts, `${VAR}` secrets,
//! and whether a field already has a problem recorded.

use toml::Spanned;

use crate::config::{Reporter, env};
use crate::x402::networks;

const MAX_TIMEOUT_LIMIT: u64 = 86_400;

/// Whether a problem was already recorded for `field` or one of its sub-fields.
pub(super) fn reported(rep: &Reporter, field: &str) -> bool {
    rep.issues.iter().any(|i| {
        i.field
            .strip_prefix(field)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// Records a problem unless `addr` is an `IP:port` socket address.
pub(super) fn check_addr(rep: &mut Reporter, src: usize, addr: &Spanned<String>, field: &str) {
    if addr.get_ref().parse::<std::net::SocketAddr>().is_err() {
        rep.at(
            src,
            addr.span(),
            field,
            format!("`{}` is not an IP:port address", addr.get_ref()),
        );
    }
}

/// Records a problem unless a timeout in seconds is between 1 and [`MAX_TIMEOUT_LIMIT`].
pub(super) fn check_timeout(rep: &mut Reporter, src: usize, t: &Spanned<u64>, field: &str) {
    if *t.get_ref() == 0 || *t.get_ref() > MAX_TIMEOUT_LIMIT {
        rep.at(
            src,
            t.span(),
            field,
            format!("must be between 1 and {MAX_TIMEOUT_LIMIT}"),
        );
    }
}

/// The checksummed form of a 0x address, or `None` with the problem recorded.
pub(super) fn checked_address(
    rep: &mut Reporter,
    src: usize,
    a: &Spanned<String>,
    field: &str,
) -> Option<String> {
    let c = networks::checksum_address(a.get_ref());
    if c.is_none() {
        rep.at(
            src,
            a.span(),
            field,
            format!("`{}` is not a 0x-prefixed 20-byte address", a.get_ref()),
        );
    }
    c
}

/// A value with its `${VAR}` references expanded, or `None` with the problem (naming the
/// variable, never a value) recorded.
pub(super) fn secret(
    rep: &mut Reporter,
    src: usize,
    v: &Spanned<String>,
    field: &str,
) -> Option<env::Secret> {
    env::expand(v.get_ref())
        .map_err(|e| rep.at(src, v.span(), field, e))
        .ok()
}
