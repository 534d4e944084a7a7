//! `match` conditions: a JSON Pointer into the claims and what its value must look like.
//!
//! Patterns are compiled once; matching runs a small NFA over the value's bytes, so it is
//! linear in pattern × value length whatever the pattern (no backtracking blow-up on
//! attacker-chosen claim values such as repository names).

use std::fmt;

use serde_json::Value;

use super::pointer::Pointer;
use crate::config::RawCondition;

/// Longest claim text shown in a denial or explanation.
const SHOWN_VALUE_CHARS: usize = 80;

/// One compiled `match` entry.
#[derive(Debug, Clone)]
pub struct Condition {
    pointer: Pointer,
    alternatives: Vec<Pattern>,
    /// Whether it was written as a list (for messages).
    is_list: bool,
}

/// What one alternative accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Glob(Glob),
}

/// A compiled glob: `*` matches within one `/`-separated segment, `**` across segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// Exactly one byte, whatever it is (templates use it: a placeholder is never empty).
    AnyByte,
    /// Any run of bytes without `/`.
    Star,
    /// Any run of bytes.
    DoubleStar,
}

/// How a condition failed, for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Missing,
    Value(String),
}

impl Condition {
    /// Compiles one `match` entry; the error is a message for the config's `match` key.
    pub fn compile(pointer: &str, raw: &RawCondition) -> Result<Self, String> {
        let pointer = Pointer::parse(pointer).map_err(|e| e.to_string())?;
        if pointer.is_root() {
            return Err("the empty pointer names the whole claim set, not a claim".into());
        }
        let (texts, is_list): (Vec<&str>, bool) = match raw {
            RawCondition::One(s) => (vec![s.as_str()], false),
            RawCondition::Any(list) => (list.iter().map(String::as_str).collect(), true),
        };
        if texts.is_empty() {
            return Err(format!(
                "{pointer}: an empty list of alternatives can never match"
            ));
        }
        let alternatives = texts
            .into_iter()
            .map(|t| Pattern::compile(t).map_err(|e| format!("{pointer}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pointer,
            alternatives,
            is_list,
        })
    }

    /// The claim this condition reads.
    pub fn pointer(&self) -> &Pointer {
        &self.pointer
    }

    /// The alternatives, any of which may match.
    pub fn alternatives(&self) -> &[Pattern] {
        &self.alternatives
    }

    /// Whether the claims satisfy the condition. A missing claim never matches.
    pub fn holds(&self, claims: &Value) -> bool {
        self.pointer
            .resolve(claims)
            .is_some_and(|v| self.value_matches(v))
    }

    /// What the claims hold at this pointer, when the condition fails (for messages).
    pub fn found(&self, claims: &Value) -> Found {
        match self.pointer.resolve(claims) {
            None => Found::Missing,
            Some(v) => Found::Value(show_value(v)),
        }
    }

    /// Strings compare as they are, numbers and booleans by their JSON text, arrays when
    /// any element matches; objects and null never match.
    fn value_matches(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.text_matches(s),
            Value::Number(n) => self.text_matches(&n.to_string()),
            Value::Bool(b) => self.text_matches(if *b { "true" } else { "false" }),
            Value::Array(items) => items.iter().any(|item| match item {
                Value::Array(_) => false,
                other => self.value_matches(other),
            }),
            Value::Null | Value::Object(_) => false,
        }
    }

    fn text_matches(&self, text: &str) -> bool {
        self.alternatives.iter().any(|p| p.matches(text))
    }

    /// `/ref = "main"`, `/repository to match "acme/*"`, `/ns to be one of "a", "b"`.
    pub fn requirement(&self) -> String {
        let p = &self.pointer;
        if self.is_list {
            let alts: Vec<String> = self
                .alternatives
                .iter()
                .map(|a| format!("{:?}", a.source()))
                .collect();
            return format!("{p} to be one of {}", alts.join(", "));
        }
        match &self.alternatives[..] {
            [Pattern::Exact(s)] => format!("{p} = {s:?}"),
            [Pattern::Glob(g)] => format!("{p} to match {:?}", g.source),
            _ => format!("{p} to match one of several patterns"),
        }
    }
}

impl Pattern {
    /// A string with `*` is a glob; anything else must be equal.
    pub fn compile(text: &str) -> Result<Self, String> {
        if text.contains('*') {
            Glob::compile(text).map(Pattern::Glob)
        } else {
            Ok(Pattern::Exact(text.to_string()))
        }
    }

    /// Whether `text` is accepted.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == text,
            Pattern::Glob(g) => g.matches(text),
        }
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        match self {
            Pattern::Exact(s) => s,
            Pattern::Glob(g) => &g.source,
        }
    }

    /// True when every string this pattern accepts is also accepted by `wider`
    /// (decided conservatively: false when unsure). Used by lint for shadowed rules.
    pub fn implies(&self, wider: &Pattern) -> bool {
        match (self, wider) {
            (Pattern::Exact(s), w) => w.matches(s),
            (Pattern::Glob(a), Pattern::Glob(b)) => {
                a == b || b.tokens.iter().all(|t| *t == Token::DoubleStar)
            }
            (Pattern::Glob(_), Pattern::Exact(_)) => false,
        }
    }
}

impl Glob {
    /// Compiles a glob; three or more stars in a row are refused as ambiguous.
    pub fn compile(text: &str) -> Result<Self, String> {
        if text.contains("***") {
            return Err(format!(
                "{text:?}: use `*` (within a segment) or `**` (across segments), not more"
            ));
        }
        let bytes = text.as_bytes();
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'*' {
                if bytes.get(i + 1) == Some(&b'*') {
                    tokens.push(Token::DoubleStar);
                    i += 2;
                } else {
                    tokens.push(Token::Star);
                    i += 1;
                }
            } else {
                tokens.push(Token::Byte(bytes[i]));
                i += 1;
            }
        }
        Ok(Self {
            source: text.to_string(),
            tokens,
        })
    }

    /// A matcher for SPIFFE ID templates: literal text, and each `None` piece stands for
    /// one or more bytes of anything (a placeholder renders a non-empty value that may
    /// span several segments).
    pub fn for_template<'a>(pieces: impl Iterator<Item = Option<&'a str>>) -> Self {
        let mut tokens = Vec::new();
        let mut source = String::new();
        for piece in pieces {
            match piece {
                Some(literal) => {
                    source.push_str(literal);
                    tokens.extend(literal.bytes().map(Token::Byte));
                }
                None => {
                    source.push_str("{…}");
                    tokens.push(Token::AnyByte);
                    tokens.push(Token::DoubleStar);
                }
            }
        }
        Self { source, tokens }
    }

    /// Whether `text` matches the whole glob.
    pub fn matches(&self, text: &str) -> bool {
        let n = self.tokens.len();
        let mut active = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        active[0] = true;
        self.close(&mut active);
        for &b in text.as_bytes() {
            next.iter_mut().for_each(|s| *s = false);
            let mut any = false;
            for (i, token) in self.tokens.iter().enumerate() {
                if !active[i] {
                    continue;
                }
                match *token {
                    Token::Byte(c) if c == b => {
                        next[i + 1] = true;
                        any = true;
                    }
                    Token::AnyByte => {
                        next[i + 1] = true;
                        any = true;
                    }
                    Token::Star if b != b'/' => {
                        next[i] = true;
                        any = true;
                    }
                    Token::DoubleStar => {
                        next[i] = true;
                        any = true;
                    }
                    _ => {}
                }
            }
            if !any {
                return false;
            }
            self.close(&mut next);
            std::mem::swap(&mut active, &mut next);
        }
        active[n]
    }

    /// Stars may match nothing: a state before a star also activates the state after it.
    fn close(&self, states: &mut [bool]) {
        for (i, token) in self.tokens.iter().enumerate() {
            if states[i] && matches!(token, Token::Star | Token::DoubleStar) {
                states[i + 1] = true;
            }
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Missing => f.write_str("nothing"),
            Found::Value(v) => f.write_str(v),
        }
    }
}

/// A claim value as shown to humans: strings quoted, everything cut to ~80 characters so a
/// long (possibly sensitive) value is never echoed whole.
pub fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", truncate(s)),
        Value::Object(_) => "an object".into(),
        other => truncate(&other.to_string()),
    }
}

/// Cuts text to [`SHOWN_VALUE_CHARS`] characters, marking the cut.
pub fn truncate(text: &str) -> String {
    match text.char_indices().nth(SHOWN_VALUE_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn glob(p: &str) -> Glob {
        Glob::compile(p).unwrap()
    }

    #[test]
    fn single_star_stays_within_a_segment() {
        let g = glob("acme/*");
        assert!(g.matches("acme/web"));
        assert!(g.matches("acme/"));
        assert!(!g.matches("acme/web/extra"));
        assert!(!g.matches("evil/acme/web"));
        assert!(glob("refs/heads/release-*").matches("refs/heads/release-1.2"));
        assert!(!glob("refs/heads/release-*").matches("refs/heads/release/1"));
        assert!(glob("*-prod").matches("web-prod"));
        assert!(glob("a*b*c").matches("aXbYc"));
        assert!(!glob("a*b*c").matches("aXbY"));
    }

    #[test]
    fn double_star_crosses_segments() {
        let g = glob("refs/**");
        assert!(g.matches("refs/heads/feature/x"));
        assert!(g.matches("refs/"));
        assert!(!g.matches("ref/heads"));
        assert!(glob("**/main").matches("refs/heads/main"));
        assert!(glob("a/**/z").matches("a/b/c/z"));
        assert!(!glob("a/**/z").matches("a/b/c/y"));
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let g = glob("*a*a*a*a*a*a*a*a*a*a*b");
        let value = "a".repeat(5000);
        assert!(!g.matches(&value));
    }

    #[test]
    fn triple_star_is_refused() {
        assert!(Glob::compile("a/***").is_err());
    }

    #[test]
    fn conditions_match_strings_numbers_booleans_and_arrays() {
        let exact = Condition::compile("/ref", &RawCondition::One("main".into())).unwrap();
        assert!(exact.holds(&json!({"ref": "main"})));
        assert!(!exact.holds(&json!({"ref": "mainx"})));
        assert!(!exact.holds(&json!({})), "a missing claim never matches");
        assert!(!exact.holds(&json!({"ref": null})));
        assert!(!exact.holds(&json!({"ref": {"main": 1}})));

        let num = Condition::compile("/run", &RawCondition::One("42".into())).unwrap();
        assert!(num.holds(&json!({"run": 42})));
        let flag = Condition::compile("/ok", &RawCondition::One("true".into())).unwrap();
        assert!(flag.holds(&json!({"ok": true})));
        assert!(!flag.holds(&json!({"ok": false})));

        let uri =
            Condition::compile("/san/uri", &RawCondition::One("spiffe://legacy/*".into())).unwrap();
        assert!(uri.holds(&json!({"san": {"uri": ["https://x", "spiffe://legacy/host"]}})));
        assert!(!uri.holds(&json!({"san": {"uri": ["https://x"]}})));
        assert!(!uri.holds(&json!({"san": {"uri": []}})));
    }

    #[test]
    fn lists_accept_any_alternative_including_globs() {
        let c = Condition::compile(
            "/ns",
            &RawCondition::Any(vec!["prod".into(), "team-*".into()]),
        )
        .unwrap();
        assert!(c.holds(&json!({"ns": "prod"})));
        assert!(c.holds(&json!({"ns": "team-a"})));
        assert!(!c.holds(&json!({"ns": "staging"})));
        assert_eq!(c.requirement(), r#"/ns to be one of "prod", "team-*""#);
        assert!(Condition::compile("/ns", &RawCondition::Any(vec![])).is_err());
    }

    #[test]
    fn bad_pointers_are_refused() {
        assert!(Condition::compile("ref", &RawCondition::One("x".into())).is_err());
        assert!(Condition::compile("", &RawCondition::One("x".into())).is_err());
    }

    #[test]
    fn shown_values_are_truncated() {
        let long = "x".repeat(500);
        let shown = show_value(&json!(long));
        assert!(shown.chars().count() < 90, "{shown}");
        assert!(shown.ends_with("…\""));
    }

    #[test]
    fn template_globs_need_at_least_one_byte_per_placeholder() {
        let g = Glob::for_template([Some("spiffe://td/ns/"), None, Some("/sa")].into_iter());
        assert!(g.matches("spiffe://td/ns/prod/sa"));
        assert!(g.matches("spiffe://td/ns/a/b/sa"));
        assert!(!g.matches("spiffe://td/ns//sa"));
        assert!(!g.matches("spiffe://td/ns/prod/sb"));
    }
}
