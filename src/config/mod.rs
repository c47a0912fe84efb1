//! Configuration: reads `gateway.toml` and the rules folder, reports every problem at once as
//! `file:line:col: field: message`, and compiles a valid configuration into a [`Snapshot`].

pub mod access_file;
pub(crate) mod compile;
pub mod env;
pub mod file;
mod lint;
pub mod price;
pub mod rules_file;
pub mod state_file;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::snapshot::Snapshot;
use access_file::CrawlerDef;
use file::GatewayFile;
use rules_file::RuleDef;

pub use compile::compile;

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.col, self.field, self.message
        )
    }
}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Issues(pub Vec<Issue>);

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, i) in self.0.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            write!(f, "{i}")?;
        }
        Ok(())
    }
}

/// A file that was read, kept for locating spans.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(path: PathBuf, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path,
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, col)
    }
}

/// Collects issues against the sources they belong to.
#[derive(Debug, Default)]
pub struct Reporter {
    pub sources: Vec<Source>,
    pub issues: Vec<Issue>,
    /// Other files the configuration read (certificates, keys, CA bundles), with what
    /// identifies their content: part of the content hash, and watched for changes.
    pub files_read: Vec<(PathBuf, Vec<u8>)>,
}

impl Reporter {
    /// Records a problem at a span of source `src`.
    pub fn at(
        &mut self,
        src: usize,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl fmt::Display,
    ) {
        let s = &self.sources[src];
        let (line, col) = s.locate(span.start);
        self.issues.push(Issue {
            file: s.path.display().to_string(),
            line,
            col,
            field: field.into(),
            message: message.to_string(),
        });
    }

    /// Records a problem about a whole file.
    pub fn file(&mut self, path: &Path, field: &str, message: impl fmt::Display) {
        self.issues.push(Issue {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            field: field.into(),
            message: message.to_string(),
        });
    }

    /// `file:line:col` of a span, for messages that point elsewhere.
    pub fn where_is(&self, src: usize, span: Range<usize>) -> String {
        let s = &self.sources[src];
        let (line, col) = s.locate(span.start);
        format!("{}:{line}:{col}", s.path.display())
    }

    /// The issues in file order (configuration file first, then rule files), each file by
    /// line and column.
    pub fn into_issues(self) -> Issues {
        let order = |file: &str| {
            self.sources
                .iter()
                .position(|s| s.path.display().to_string() == file)
                .unwrap_or(usize::MAX)
        };
        let mut issues = self.issues.clone();
        issues.sort_by_key(|i| (order(&i.file), i.line, i.col));
        Issues(issues)
    }

    fn add_source(&mut self, path: PathBuf, text: String) -> usize {
        self.sources.push(Source::new(path, text));
        self.sources.len() - 1
    }
}

/// A rule as read, with where it came from.
#[derive(Debug, Clone)]
pub struct ParsedRule {
    pub src: usize,
    pub span: Range<usize>,
    pub def: RuleDef,
}

/// A `[[crawler]]` as read, with where it came from.
#[derive(Debug, Clone)]
pub struct ParsedCrawler {
    pub src: usize,
    pub span: Range<usize>,
    pub def: CrawlerDef,
}

/// Everything read from disk, before compilation.
#[derive(Debug)]
pub struct Parsed {
    pub gateway: GatewayFile,
    pub rules: Vec<ParsedRule>,
    pub crawlers: Vec<ParsedCrawler>,
    pub rules_dir: PathBuf,
    pub rule_files: Vec<PathBuf>,
}

fn clean_message(e: &toml::de::Error) -> String {
    let m = e.message().trim();
    m.lines().next().unwrap_or(m).to_string()
}

/// Deserializes one value, recording a located issue on failure.
fn section<T: DeserializeOwned>(
    rep: &mut Reporter,
    src: usize,
    field: &str,
    v: &Spanned<DeValue<'_>>,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(v.clone())) {
        Ok(t) => Some(t),
        Err(e) => {
            let span = e.span().unwrap_or_else(|| v.span());
            rep.at(src, span, field, clean_message(&e));
            None
        }
    }
}

fn parse_doc<'a>(rep: &mut Reporter, src: usize, text: &'a str) -> Option<DeTable<'a>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(doc.into_inner());
    }
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        rep.at(src, span, "syntax", clean_message(&e));
    }
    None
}

/// Reads `gateway.toml` into its sections.
fn parse_gateway(rep: &mut Reporter, src: usize) -> GatewayFile {
    let text = rep.sources[src].text.clone();
    let mut g = GatewayFile::default();
    let Some(mut doc) = parse_doc(rep, src, &text) else {
        return g;
    };
    env::expand_document(rep, src, &mut doc, env::SECRET_FIELDS);
    for (key, value) in &doc {
        let k: &str = key.get_ref();
        match k {
            "server" => g.server = section(rep, src, k, value),
            "admin" => g.admin = section(rep, src, k, value).unwrap_or_default(),
            "upstreams" => match value.get_ref() {
                DeValue::Table(t) => {
                    for (name, v) in t {
                        let field = format!("upstreams.{}", name.get_ref());
                        if let Some(u) = section(rep, src, &field, v) {
                            g.upstreams.insert(name.get_ref().to_string(), Spanned::new(v.span(), u));
                        }
                    }
                }
                _ => rep.at(src, value.span(), k, "expected a table of named upstreams"),
            },
            "payment" => g.payment = section(rep, src, k, value).unwrap_or_default(),
            "networks" => g.networks = section(rep, src, k, value).unwrap_or_default(),
            "assets" => g.assets = section(rep, src, k, value).unwrap_or_default(),
            "facilitators" => g.facilitators = section(rep, src, k, value).unwrap_or_default(),
            "reload" => g.reload = section(rep, src, k, value).unwrap_or_default(),
            "logging" => g.logging = section(rep, src, k, value).unwrap_or_default(),
            "rules" => g.rules = section(rep, src, k, value).unwrap_or_default(),
            "ledger" => g.ledger = section(rep, src, k, value).unwrap_or_default(),
            "facilitator_api" => g.facilitator_api = section(rep, src, k, value),
            "web_bot_auth" => g.web_bot_auth = section(rep, src, k, value).unwrap_or_default(),
            "passes" => g.passes = section(rep, src, k, value),
            "paywall" => g.paywall = section(rep, src, k, value).unwrap_or_default(),
            "state" => g.state = section(rep, src, k, value).unwrap_or_default(),
            "discovery" => g.discovery = section(rep, src, k, value).unwrap_or_default(),
            other => rep.at(
                src,
                key.span(),
                other,
                "unknown section, expected one of `server`, `admin`, `upstreams`, `payment`, `networks`, `assets`, `facilitators`, `reload`, `logging`, `rules`, `ledger`, `facilitator_api`, `web_bot_auth`, `passes`, `paywall`, `state`, `discovery`",
            ),
        }
    }
    g
}

/// Reads one rules file: `[[rule]]` and `[[crawler]]` tables.
fn parse_rules(
    rep: &mut Reporter,
    src: usize,
    out: &mut Vec<ParsedRule>,
    crawlers: &mut Vec<ParsedCrawler>,
) {
    let text = rep.sources[src].text.clone();
    let Some(mut doc) = parse_doc(rep, src, &text) else {
        return;
    };
    env::expand_document(rep, src, &mut doc, &[]);
    for (key, value) in &doc {
        let kind = key.get_ref();
        if kind != "rule" && kind != "crawler" {
            rep.at(
                src,
                key.span(),
                kind.to_string(),
                "unknown key, rules files hold `[[rule]]` and `[[crawler]]` tables only",
            );
            continue;
        }
        let DeValue::Array(items) = value.get_ref() else {
            rep.at(
                src,
                value.span(),
                kind.to_string(),
                format!("expected `[[{kind}]]` tables"),
            );
            continue;
        };
        for (n, item) in items.iter().enumerate() {
            let field = format!("{kind}[{n}]");
            if kind == "crawler" {
                if let Some(def) = section::<CrawlerDef>(rep, src, &field, item) {
                    crawlers.push(ParsedCrawler {
                        src,
                        span: item.span(),
                        def,
                    });
                }
            } else if let Some(def) = section::<RuleDef>(rep, src, &field, item) {
                out.push(ParsedRule {
                    src,
                    span: item.span(),
                    def,
                });
            }
        }
    }
}

/// Lists `*.toml` files of a folder in lexical order.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every file. Problems are recorded in `rep`.
pub fn read(config: &Path, rep: &mut Reporter) -> Parsed {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => {
            rep.file(config, "file", format!("cannot read: {e}"));
            String::new()
        }
    };
    let src = rep.add_source(config.to_path_buf(), text);
    let gateway = parse_gateway(rep, src);
    let base = config.parent().unwrap_or(Path::new("."));
    let rules_dir = base.join(gateway.rules.dir.get_ref());
    let mut rules = Vec::new();
    let mut crawlers = Vec::new();
    let files = match rule_files(&rules_dir) {
        Ok(f) => f,
        Err(e) => {
            let span = gateway.rules.dir.span();
            if span.is_empty() && span.start == 0 {
                rep.file(
                    config,
                    "rules.dir",
                    format!("cannot read rules folder {}: {e}", rules_dir.display()),
                );
            } else {
                rep.at(
                    src,
                    span,
                    "rules.dir",
                    format!("cannot read rules folder {}: {e}", rules_dir.display()),
                );
            }
            Vec::new()
        }
    };
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(t) => {
                let s = rep.add_source(f.clone(), t);
                parse_rules(rep, s, &mut rules, &mut crawlers);
            }
            Err(e) => rep.file(f, "file", format!("cannot read: {e}")),
        }
    }
    Parsed {
        gateway,
        rules,
        crawlers,
        rules_dir,
        rule_files: files,
    }
}

/// Compiles a configuration held in memory (for tools and fuzzing): `gateway.toml` text and
/// rule files as (name, text), with the same checks and the same report as [`load`].
pub fn load_from_texts(
    config_name: &Path,
    config_text: &str,
    rule_texts: &[(PathBuf, String)],
) -> Result<Snapshot, Issues> {
    let mut rep = Reporter::default();
    let src = rep.add_source(config_name.to_path_buf(), config_text.to_owned());
    let gateway = parse_gateway(&mut rep, src);
    let base = config_name.parent().unwrap_or(Path::new("."));
    let rules_dir = base.join(gateway.rules.dir.get_ref());
    let mut rules = Vec::new();
    let mut crawlers = Vec::new();
    for (name, text) in rule_texts {
        let s = rep.add_source(name.clone(), text.clone());
        parse_rules(&mut rep, s, &mut rules, &mut crawlers);
    }
    let parsed = Parsed {
        gateway,
        rules,
        crawlers,
        rules_dir,
        rule_files: rule_texts.iter().map(|(n, _)| n.clone()).collect(),
    };
    match compile(&parsed, &mut rep, 1, None) {
        Some(s) if rep.issues.is_empty() => Ok(s),
        _ => Err(rep.into_issues()),
    }
}

/// Reads and compiles a configuration. `previous` lets unchanged upstream pools keep their
/// health state.
pub fn load(
    config: &Path,
    generation: u64,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Issues> {
    let mut rep = Reporter::default();
    let parsed = read(config, &mut rep);
    let snapshot = compile(&parsed, &mut rep, generation, previous);
    match snapshot {
        Some(s) if rep.issues.is_empty() => Ok(s),
        _ => Err(rep.into_issues()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_lines_and_columns() {
        let s = Source::new("f".into(), "a = 1\nbé = 2\n".into());
        assert_eq!(s.locate(0), (1, 1));
        assert_eq!(s.locate(6), (2, 1));
        assert_eq!(s.locate(10), (2, 4));
    }
}
