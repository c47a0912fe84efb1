//! Routing: (host, method, path) → the most specific rule. Patterns are compiled once per
//! snapshot into a trie on leading literal segments; matching a request allocates nothing.

use std::collections::HashMap;

/// HTTP methods as a bit set. Bit 9 is "any other method".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Methods(pub u16);

const METHOD_NAMES: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

impl Methods {
    pub const ANY: Methods = Methods(0);

    /// The bit of one method name. Methods are case-sensitive (RFC 9110 §9.1): `get` is not
    /// `GET` here. The HTTP parser accepts any case, so routing refuses known methods spelled
    /// in another case before it gets here.
    pub fn bit(method: &str) -> u16 {
        METHOD_NAMES
            .iter()
            .position(|m| *m == method)
            .map_or(1 << 9, |i| 1 << i)
    }

    /// Parses a method name for configuration; `None` if it is not a known method.
    pub fn parse(name: &str) -> Option<u16> {
        let upper = name.to_ascii_uppercase();
        METHOD_NAMES
            .iter()
            .position(|m| *m == upper)
            .map(|i| 1 << i)
    }

    /// The standard spelling of a known method given in any case (`get` → `GET`).
    pub fn canonical_name(name: &str) -> Option<&'static str> {
        METHOD_NAMES
            .iter()
            .find(|m| m.eq_ignore_ascii_case(name))
            .copied()
    }

    pub fn matches(self, bit: u16) -> bool {
        self.0 == 0 || self.0 & bit != 0
    }

    pub fn intersects(self, other: Methods) -> bool {
        self.0 == 0 || other.0 == 0 || self.0 & other.0 != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        (0..9)
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| METHOD_NAMES[i])
            .collect()
    }
}

/// One path segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// Matches exactly this text.
    Lit(Box<str>),
    /// A glob over one segment: `*` matches any run of characters except `/`.
    Glob(Box<str>),
    /// `**`: zero or more whole segments.
    Rest,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segs: Vec<Seg>,
    /// Number of leading literal segments (the trie depth of this pattern).
    pub literal_prefix: usize,
}

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("path pattern must start with '/'")]
    NotAbsolute,
    #[error("'**' must be a whole path segment")]
    PartialDoubleStar,
    #[error("path pattern may not contain '?' or '#'")]
    QueryInPattern,
    #[error("{0}")]
    Path(&'static str),
    #[error(
        "host pattern is empty or contains characters other than letters, digits, '-', '.', '*'"
    )]
    BadHost,
}

impl PathPattern {
    /// Compiles a glob (`/api/*/x`, `/docs/**`, `/img/*.png`). The literal text is put through
    /// the same canonicalization as request paths, and lower-cased unless `case_sensitive`.
    pub fn glob(pattern: &str, case_sensitive: bool) -> Result<Self, PatternError> {
        if !pattern.starts_with('/') {
            return Err(PatternError::NotAbsolute);
        }
        if pattern.contains(['?', '#']) {
            return Err(PatternError::QueryInPattern);
        }
        let canon =
            crate::pathnorm::canonical_path(pattern).map_err(|e| PatternError::Path(e.reason()))?;
        let key = crate::pathnorm::match_key(&canon, case_sensitive);
        let mut segs = Vec::new();
        if key.as_ref() != "/" {
            for s in key[1..].split('/') {
                if s == "**" {
                    if segs.last() != Some(&Seg::Rest) {
                        segs.push(Seg::Rest);
                    }
                } else if s.contains("**") {
                    return Err(PatternError::PartialDoubleStar);
                } else if s.contains('*') {
                    segs.push(Seg::Glob(s.into()));
                } else {
                    segs.push(Seg::Lit(s.into()));
                }
            }
        }
        let literal_prefix = segs.iter().take_while(|s| matches!(s, Seg::Lit(_))).count();
        Ok(PathPattern {
            segs,
            literal_prefix,
        })
    }

    /// A prefix match: `/api/` and `/api` both mean `/api/**`.
    pub fn prefix(prefix: &str, case_sensitive: bool) -> Result<Self, PatternError> {
        let trimmed = prefix.trim_end_matches('/');
        if trimmed.contains('*') {
            return Err(PatternError::PartialDoubleStar);
        }
        Self::glob(&format!("{trimmed}/**"), case_sensitive)
    }

    /// Specificity: (literal characters, fewer `**`, fewer globs). Higher is more specific.
    pub fn specificity(&self) -> (u32, i32, i32) {
        let mut lit = 0u32;
        let mut rest = 0i32;
        let mut globs = 0i32;
        for s in &self.segs {
            match s {
                Seg::Lit(t) => lit += t.len() as u32 + 1,
                Seg::Glob(t) => {
                    lit += t.bytes().filter(|&b| b != b'*').count() as u32;
                    globs += 1;
                }
                Seg::Rest => rest += 1,
            }
        }
        (lit, -rest, -globs)
    }

    /// Matches a routing key (see [`crate::pathnorm::match_key`]).
    pub fn matches(&self, key: &str) -> bool {
        let rest = key.strip_prefix('/').unwrap_or(key);
        match_segs(&self.segs, rest)
    }

    /// Whether some path matches both patterns.
    pub fn overlaps(&self, other: &PathPattern) -> bool {
        segs_overlap(&self.segs, &other.segs)
    }
}

/// Matches segment patterns against the rest of a path (`a/b/c`, empty for `/`).
fn match_segs(segs: &[Seg], path: &str) -> bool {
    let Some((first, more)) = segs.split_first() else {
        return path.is_empty();
    };
    if let Seg::Rest = first {
        if more.is_empty() {
            return true;
        }
        if match_segs(more, path) {
            return true;
        }
        let mut p = path;
        while let Some(i) = p.find('/') {
            p = &p[i + 1..];
            if match_segs(more, p) {
                return true;
            }
        }
        return false;
    }
    if path.is_empty() {
        return false;
    }
    let (seg, tail, had_slash) = match path.find('/') {
        Some(i) => (&path[..i], &path[i + 1..], true),
        None => (path, "", false),
    };
    let ok = match first {
        Seg::Lit(t) => &**t == seg,
        Seg::Glob(g) => glob_match(g.as_bytes(), seg.as_bytes()),
        Seg::Rest => false,
    };
    if !ok {
        return false;
    }
    if had_slash && tail.is_empty() {
        // "a/" cannot happen: keys have no trailing slash.
        return more.is_empty() || matches!(more, [Seg::Rest]);
    }
    match_segs(more, tail)
}

/// Glob with `*` (any run of bytes) over one segment or host.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let (mut star, mut mark) = (usize::MAX, 0usize);
    while i < s.len() {
        if p < pat.len() && pat[p] != b'*' && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = p;
            mark = i;
            p += 1;
        } else if star != usize::MAX {
            p = star + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// Whether two `*`-globs have a common match.
pub fn globs_overlap(a: &[u8], b: &[u8]) -> bool {
    // memo[i][j]: common string exists for a[i..], b[j..].
    let mut memo = vec![None; (a.len() + 1) * (b.len() + 1)];
    fn go(a: &[u8], b: &[u8], i: usize, j: usize, memo: &mut Vec<Option<bool>>) -> bool {
        let k = i * (b.len() + 1) + j;
        if let Some(v) = memo[k] {
            return v;
        }
        memo[k] = Some(false);
        let a_star = i < a.len() && a[i] == b'*';
        let b_star = j < b.len() && b[j] == b'*';
        let r = (i == a.len() && j == b.len())
            || (a_star && go(a, b, i + 1, j, memo))
            || (b_star && go(a, b, i, j + 1, memo))
            || (i < a.len() && j < b.len() && !(a_star && b_star) && {
                let compatible = a_star || b_star || a[i] == b[j];
                compatible
                    && go(
                        a,
                        b,
                        if a_star { i } else { i + 1 },
                        if b_star { j } else { j + 1 },
                        memo,
                    )
            });
        memo[k] = Some(r);
        r
    }
    go(a, b, 0, 0, &mut memo)
}

fn seg_overlap(a: &Seg, b: &Seg) -> bool {
    match (a, b) {
        (Seg::Lit(x), Seg::Lit(y)) => x == y,
        (Seg::Lit(x), Seg::Glob(g)) | (Seg::Glob(g), Seg::Lit(x)) => {
            glob_match(g.as_bytes(), x.as_bytes())
        }
        (Seg::Glob(x), Seg::Glob(y)) => globs_overlap(x.as_bytes(), y.as_bytes()),
        _ => true,
    }
}

fn segs_overlap(a: &[Seg], b: &[Seg]) -> bool {
    match (a.first(), b.first()) {
        (None, None) => true,
        (Some(Seg::Rest), _) => {
            segs_overlap(&a[1..], b) || (!b.is_empty() && segs_overlap(a, &b[1..]))
        }
        (_, Some(Seg::Rest)) => {
            segs_overlap(a, &b[1..]) || (!a.is_empty() && segs_overlap(&a[1..], b))
        }
        (Some(x), Some(y)) => seg_overlap(x, y) && segs_overlap(&a[1..], &b[1..]),
        _ => false,
    }
}

/// A host pattern: any host, an exact name, or a glob such as `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Exact(Box<str>),
    Glob(Box<str>),
}

impl HostPattern {
    pub fn parse(p: &str) -> Result<Self, PatternError> {
        let p = p.trim_end_matches('.').to_ascii_lowercase();
        if p == "*" {
            return Ok(HostPattern::Any);
        }
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*' | b'_'))
        {
            return Err(PatternError::BadHost);
        }
        Ok(if p.contains('*') {
            HostPattern::Glob(p.into())
        } else {
            HostPattern::Exact(p.into())
        })
    }

    /// `host` must already be lower-case, without port or trailing dot.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => &**h == host,
            HostPattern::Glob(g) => glob_match(g.as_bytes(), host.as_bytes()),
        }
    }

    pub fn specificity(&self) -> u32 {
        match self {
            HostPattern::Any => 0,
            HostPattern::Exact(h) => 1000 + h.len() as u32,
            HostPattern::Glob(g) => g.bytes().filter(|&b| b != b'*').count() as u32,
        }
    }

    pub fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) | (_, HostPattern::Any) => true,
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Exact(h), HostPattern::Glob(g))
            | (HostPattern::Glob(g), HostPattern::Exact(h)) => {
                glob_match(g.as_bytes(), h.as_bytes())
            }
            (HostPattern::Glob(a), HostPattern::Glob(b)) => {
                globs_overlap(a.as_bytes(), b.as_bytes())
            }
        }
    }

    /// The host name when this is an exact pattern.
    pub fn exact(&self) -> Option<&str> {
        match self {
            HostPattern::Exact(h) => Some(h),
            _ => None,
        }
    }
}

/// What the router needs to know about a rule.
#[derive(Debug, Clone)]
pub struct Route {
    pub host: HostPattern,
    pub methods: Methods,
    pub path: PathPattern,
}

impl Route {
    /// Specificity, compared path first, then host, then methods.
    pub fn specificity(&self) -> ((u32, i32, i32), u32, bool) {
        (
            self.path.specificity(),
            self.host.specificity(),
            self.methods != Methods::ANY,
        )
    }

    /// Whether some request could match both routes.
    pub fn overlaps(&self, other: &Route) -> bool {
        self.methods.intersects(other.methods)
            && self.path.overlaps(&other.path)
            && self.host.overlaps(&other.host)
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Route indices whose literal prefix ends here and whose host is not an exact name, most
    /// specific first.
    routes: Vec<u32>,
    /// The same for routes with an exact host, by host: a request only looks at its own host's
    /// list, so many tenants sharing one path cost one hash lookup instead of a scan.
    by_host: HashMap<Box<str>, Vec<u32>>,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// rank[i]: position of route i in specificity order (0 = most specific).
    rank: Vec<u32>,
    root: Node,
}

/// Two routes that are equally specific and can match the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict(pub usize, pub usize);

impl Router {
    /// Builds the table, reporting every pair of equally specific overlapping routes.
    pub fn build(routes: Vec<Route>) -> (Router, Vec<Conflict>) {
        let specs: Vec<_> = routes.iter().map(Route::specificity).collect();
        let mut order: Vec<u32> = (0..routes.len() as u32).collect();
        order.sort_by(|&a, &b| specs[b as usize].cmp(&specs[a as usize]).then(a.cmp(&b)));
        let mut rank = vec![0u32; routes.len()];
        for (pos, &i) in order.iter().enumerate() {
            rank[i as usize] = pos as u32;
        }
        let conflicts = find_conflicts(&routes, &specs, &order);
        let mut root = Node::default();
        for &i in &order {
            let r = &routes[i as usize];
            let mut node = &mut root;
            for s in &r.path.segs[..r.path.literal_prefix] {
                let Seg::Lit(t) = s else { break };
                node = node.children.entry(t.clone()).or_default();
            }
            match r.host.exact() {
                Some(h) => node.by_host.entry(h.into()).or_default().push(i),
                None => node.routes.push(i),
            }
        }
        (Router { routes, rank, root }, conflicts)
    }

    /// The index of the most specific route matching the request, if any. `host` lower-case
    /// without port, `key` from [`crate::pathnorm::match_key`], `method_bit` from [`Methods::bit`].
    pub fn find(&self, host: &str, method_bit: u16, key: &str) -> Option<usize> {
        let mut best: Option<(u32, usize)> = None;
        let mut node = &self.root;
        self.visit(node, host, method_bit, key, &mut best);
        let rest = key.strip_prefix('/').unwrap_or(key);
        if !rest.is_empty() {
            for seg in rest.split('/') {
                match node.children.get(seg) {
                    Some(n) => {
                        node = n;
                        self.visit(node, host, method_bit, key, &mut best);
                    }
                    None => break,
                }
            }
        }
        best.map(|(_, i)| i)
    }

    fn visit(
        &self,
        node: &Node,
        host: &str,
        method_bit: u16,
        key: &str,
        best: &mut Option<(u32, usize)>,
    ) {
        if let Some(list) = (!node.by_host.is_empty())
            .then(|| node.by_host.get(host))
            .flatten()
        {
            self.scan(list, host, method_bit, key, best);
        }
        self.scan(&node.routes, host, method_bit, key, best);
    }

    fn scan(
        &self,
        list: &[u32],
        host: &str,
        method_bit: u16,
        key: &str,
        best: &mut Option<(u32, usize)>,
    ) {
        for &i in list {
            let rank = self.rank[i as usize];
            if best.is_some_and(|(b, _)| b <= rank) {
                break;
            }
            let r = &self.routes[i as usize];
            if r.methods.matches(method_bit) && r.host.matches(host) && r.path.matches(key) {
                *best = Some((rank, i as usize));
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Routes of one group split by host: routes with different exact hosts never overlap.
#[derive(Default)]
struct HostBuckets<'a> {
    exact: HashMap<&'a str, Vec<u32>>,
    /// Any host or a host glob.
    other: Vec<u32>,
}

impl<'a> HostBuckets<'a> {
    fn new(routes: &'a [Route], ids: &[u32]) -> Self {
        let mut b = HostBuckets::default();
        for &i in ids {
            match routes[i as usize].host.exact() {
                Some(h) => b.exact.entry(h).or_default().push(i),
                None => b.other.push(i),
            }
        }
        b
    }

    /// Routes whose host may overlap `host`.
    fn candidates<'b>(&'b self, host: &'b HostPattern) -> Box<dyn Iterator<Item = u32> + 'b> {
        match host.exact() {
            Some(h) => Box::new(
                self.exact
                    .get(h)
                    .into_iter()
                    .flatten()
                    .chain(&self.other)
                    .copied(),
            ),
            None => Box::new(self.exact.values().flatten().chain(&self.other).copied()),
        }
    }

    /// Every pair within the group whose hosts may overlap, each once.
    fn pairs(&self, mut f: impl FnMut(u32, u32)) {
        let mut within = |ids: &[u32]| {
            for (n, &a) in ids.iter().enumerate() {
                for &b in &ids[n + 1..] {
                    f(a, b);
                }
            }
        };
        for ids in self.exact.values() {
            within(ids);
        }
        within(&self.other);
        for ids in self.exact.values() {
            for &a in ids {
                for &b in &self.other {
                    f(a, b);
                }
            }
        }
    }
}

/// The literal prefix of a route's path (`""`, `"/a"`, `"/a/b"`): routes whose prefixes are
/// not one a prefix of the other differ in a literal segment and never overlap.
fn literal_key(r: &Route) -> String {
    let mut k = String::new();
    for s in &r.path.segs[..r.path.literal_prefix] {
        if let Seg::Lit(t) = s {
            k.push('/');
            k.push_str(t);
        }
    }
    k
}

/// Finds equally specific overlapping pairs. Routes are grouped by specificity, then by literal
/// path prefix, then by exact host, so only routes that could meet are compared: those with
/// the same prefix, and each route with those whose prefix is an ancestor of its own.
fn find_conflicts(
    routes: &[Route],
    specs: &[((u32, i32, i32), u32, bool)],
    order: &[u32],
) -> Vec<Conflict> {
    let mut out = Vec::new();
    let mut check = |a: u32, b: u32| {
        if routes[a as usize].overlaps(&routes[b as usize]) {
            out.push(Conflict(a.min(b) as usize, a.max(b) as usize));
        }
    };
    let mut start = 0;
    while start < order.len() {
        let spec = specs[order[start] as usize];
        let mut end = start + 1;
        while end < order.len() && specs[order[end] as usize] == spec {
            end += 1;
        }
        if end - start > 1 {
            let mut by_prefix: HashMap<String, Vec<u32>> = HashMap::new();
            for &i in &order[start..end] {
                by_prefix
                    .entry(literal_key(&routes[i as usize]))
                    .or_default()
                    .push(i);
            }
            let groups: HashMap<&str, (&[u32], HostBuckets<'_>)> = by_prefix
                .iter()
                .map(|(k, ids)| (k.as_str(), (ids.as_slice(), HostBuckets::new(routes, ids))))
                .collect();
            for (key, (ids, buckets)) in &groups {
                buckets.pairs(&mut check);
                if groups.len() == 1 {
                    continue;
                }
                for (pos, _) in key.match_indices('/') {
                    let Some((_, ancestor)) = groups.get(&key[..pos]) else {
                        continue;
                    };
                    for &a in *ids {
                        for b in ancestor.candidates(&routes[a as usize].host) {
                            check(a, b);
                        }
                    }
                }
            }
        }
        start = end;
    }
    out.sort_by_key(|c| (c.0, c.1));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, methods: &[&str], path: &str) -> Route {
        let mut m = 0;
        for x in methods {
            m |= Methods::parse(x).expect("method");
        }
        Route {
            host: HostPattern::parse(host).expect("host"),
            methods: Methods(m),
            path: PathPattern::glob(path, false).expect("path"),
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*.png", b"a.png"));
        assert!(glob_match(b"*.png", b".png"));
        assert!(!glob_match(b"*.png", b"a.jpg"));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(globs_overlap(b"a*", b"*b"));
        assert!(!globs_overlap(b"a*", b"b*"));
        assert!(globs_overlap(b"*.png", b"img*"));
        assert!(!globs_overlap(b"*.png", b"*.jpg"));
        assert!(globs_overlap(b"*", b"*"));
    }

    #[test]
    fn path_patterns() {
        let p = PathPattern::glob("/api/**", false).expect("p");
        assert!(p.matches("/api"));
        assert!(p.matches("/api/x/y"));
        assert!(!p.matches("/apix"));
        let p = PathPattern::glob("/**/*.pdf", false).expect("p");
        assert!(p.matches("/a/b.pdf"));
        assert!(p.matches("/b.pdf"));
        assert!(!p.matches("/b.pdfx"));
        let p = PathPattern::glob("/", false).expect("p");
        assert!(p.matches("/"));
        assert!(!p.matches("/a"));
        let p = PathPattern::glob("/API/Weather", false).expect("p");
        assert!(p.matches("/api/weather"));
        assert_eq!(
            PathPattern::glob("/a/**b", false),
            Err(PatternError::PartialDoubleStar)
        );
        assert_eq!(
            PathPattern::prefix("/api/", false),
            PathPattern::glob("/api/**", false)
        );
    }

    #[test]
    fn most_specific_wins() {
        let routes = vec![
            route("*", &[], "/**"),
            route("*", &[], "/api/**"),
            route("*", &["GET"], "/api/weather"),
            route("*", &[], "/api/weather"),
            route("*.example.com", &[], "/api/weather"),
            route("*", &[], "/img/*.png"),
        ];
        let (r, conflicts) = Router::build(routes);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        let get = Methods::bit("GET");
        let post = Methods::bit("POST");
        assert_eq!(r.find("x.org", get, "/api/weather"), Some(2));
        assert_eq!(r.find("x.org", post, "/api/weather"), Some(3));
        assert_eq!(r.find("a.example.com", get, "/api/weather"), Some(4));
        assert_eq!(r.find("x.org", get, "/api/other"), Some(1));
        assert_eq!(r.find("x.org", get, "/img/a.png"), Some(5));
        assert_eq!(r.find("x.org", get, "/img/a.gif"), Some(0));
        assert_eq!(r.find("x.org", get, "/"), Some(0));
    }

    #[test]
    fn exact_hosts_are_indexed() {
        let mut routes = vec![
            route("*", &[], "/**"),
            route("*.example.com", &[], "/account/**"),
        ];
        for t in 0..50 {
            routes.push(route(&format!("t{t}.example.com"), &[], "/account/**"));
        }
        routes.push(route("t7.example.com", &["GET"], "/account/**"));
        let (r, conflicts) = Router::build(routes);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        let (get, post) = (Methods::bit("GET"), Methods::bit("POST"));
        assert_eq!(r.find("t3.example.com", get, "/account/x"), Some(5));
        assert_eq!(r.find("t7.example.com", get, "/account/x"), Some(52));
        assert_eq!(r.find("t7.example.com", post, "/account/x"), Some(9));
        assert_eq!(r.find("zz.example.com", get, "/account/x"), Some(1));
        assert_eq!(r.find("other.org", get, "/account/x"), Some(0));

        let (_, c) = Router::build(vec![
            route("a.com", &[], "/x/**"),
            route("b.com", &[], "/x/**"),
            route("a.com", &[], "/x/**"),
            route("a.com", &[], "/*/**"),
            route("a.com", &[], "/x/*"),
        ]);
        assert_eq!(c, vec![Conflict(0, 2)]);
        let (_, c) = Router::build(vec![
            route("a.com", &[], "/x/y"),
            route("b.com", &[], "/x/y"),
            route("c.com", &[], "/*/yy"),
            route("a.com", &[], "/*/yy"),
        ]);
        assert!(c.is_empty(), "{c:?}");
        // Host globs of equal specificity still meet each other.
        let (_, c) = Router::build(vec![
            route("*.a.com", &[], "/x"),
            route("x.a.c*m", &[], "/x"),
            route("*.b.org", &[], "/x"),
        ]);
        assert_eq!(c, vec![Conflict(0, 1)]);
    }

    /// A fixed-seed generator for the brute-force comparisons.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as usize % n
        }
    }

    /// `n` routes drawn from small alphabets, so that many overlap.
    fn random_routes(rng: &mut Lcg, n: usize, hosts: &[&str], segs: &[&str]) -> Vec<Route> {
        let methods: [&[&str]; 3] = [&[], &["GET"], &["POST"]];
        (0..n)
            .map(|_| {
                let depth = 1 + rng.next(3);
                let path: String = (0..depth)
                    .map(|_| format!("/{}", segs[rng.next(segs.len())]))
                    .collect();
                route(hosts[rng.next(hosts.len())], methods[rng.next(3)], &path)
            })
            .collect()
    }

    #[test]
    fn conflicts_match_brute_force() {
        // Small alphabets so that many generated routes overlap at equal specificity.
        let hosts = ["*", "a.com", "b.com", "*.com", "a.*"];
        let segs = ["a", "b", "*", "**", "a*", "*b"];
        let routes = random_routes(&mut Lcg(12345), 300, &hosts, &segs);
        let mut naive = Vec::new();
        for a in 0..routes.len() {
            for b in a + 1..routes.len() {
                if routes[a].specificity() == routes[b].specificity()
                    && routes[a].overlaps(&routes[b])
                {
                    naive.push(Conflict(a, b));
                }
            }
        }
        assert!(naive.len() > 50, "the generator should produce conflicts");
        let (_, found) = Router::build(routes);
        assert_eq!(found, naive);
    }

    #[test]
    fn find_matches_brute_force() {
        let hosts = ["*", "a.com", "b.com", "*.com", "a.*", "c.org"];
        let segs = ["a", "b", "*", "**", "a*", "*b", "c"];
        let mut rng = Lcg(777);
        let routes = random_routes(&mut rng, 200, &hosts, &segs);
        let (r, _) = Router::build(routes.clone());
        let words = ["a", "b", "c", "ab", "ba", "cb"];
        let req_hosts = ["a.com", "b.com", "c.org", "x.com", "a.net"];
        for _ in 0..2000 {
            let depth = rng.next(4);
            let key: String = if depth == 0 {
                "/".into()
            } else {
                (0..depth)
                    .map(|_| format!("/{}", words[rng.next(words.len())]))
                    .collect()
            };
            let host = req_hosts[rng.next(req_hosts.len())];
            let bit = Methods::bit(["GET", "POST", "PUT"][rng.next(3)]);
            let naive = (0..routes.len())
                .filter(|&i| {
                    let rt = &routes[i];
                    rt.methods.matches(bit) && rt.host.matches(host) && rt.path.matches(&key)
                })
                .min_by(|&a, &b| {
                    routes[b]
                        .specificity()
                        .cmp(&routes[a].specificity())
                        .then(a.cmp(&b))
                });
            assert_eq!(r.find(host, bit, &key), naive, "{host} {key}");
        }
    }

    #[test]
    fn conflicts_are_found() {
        let (_, c) = Router::build(vec![
            route("*", &[], "/api/*/x"),
            route("*", &[], "/api/v1/*"),
        ]);
        assert_eq!(c, vec![]); // different specificity? both have 2 literal segs: check below
        let (_, c) = Router::build(vec![route("*", &[], "/a/*"), route("*", &[], "/*/b")]);
        assert_eq!(c, vec![Conflict(0, 1)]);
        let (_, c) = Router::build(vec![
            route("*", &["GET"], "/a/*"),
            route("*", &["POST"], "/*/a"),
        ]);
        assert!(c.is_empty());
        let (_, c) = Router::build(vec![route("a.com", &[], "/x"), route("b.com", &[], "/x")]);
        assert!(c.is_empty());
        let (_, c) = Router::build(vec![
            route("*", &[], "/x/*.png"),
            route("*", &[], "/x/*.jpg"),
        ]);
        assert!(c.is_empty());
    }
}
