//! JSON Pointer (RFC 6901) lookup into attested claims.
//!
//! Pointers are parsed once at compile time so that a per-request lookup is a walk over
//! pre-split, already-unescaped reference tokens.

use std::fmt;

use serde_json::Value;

/// A parsed JSON Pointer such as `/kubernetes.io/serviceaccount/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// As written, for messages.
    text: String,
    /// Reference tokens with `~1` → `/` and `~0` → `~` already applied.
    tokens: Vec<String>,
}

/// Why a string is not a JSON Pointer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("{0:?} is not a JSON Pointer: it must start with '/'")]
    NoLeadingSlash(String),
    #[error("{0:?} is not a JSON Pointer: '~' must be followed by '0' or '1'")]
    BadEscape(String),
}

impl Pointer {
    /// Parses a pointer. The empty pointer (the whole document) is accepted here;
    /// callers that need a claim refuse it themselves.
    pub fn parse(text: &str) -> Result<Self, PointerError> {
        if text.is_empty() {
            return Ok(Self {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| PointerError::NoLeadingSlash(text.to_string()))?;
        let tokens = rest
            .split('/')
            .map(|raw| unescape(raw).ok_or_else(|| PointerError::BadEscape(text.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_string(),
            tokens,
        })
    }

    /// True for `""`, which names the whole document rather than a claim.
    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The value the pointer names, if present.
    pub fn resolve<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        let mut current = document;
        for token in &self.tokens {
            current = match current {
                Value::Object(map) => map.get(token)?,
                Value::Array(items) => items.get(array_index(token)?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Applies RFC 6901 §4 unescaping: `~1` first becomes `/`, then `~0` becomes `~`
/// (done in one pass, so `~01` is `~1`, not `/`).
fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('~') {
        return Some(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// An array index per RFC 6901: `0` or digits without a leading zero (`-` names no element).
fn array_index(token: &str) -> Option<usize> {
    let valid = token == "0"
        || (!token.is_empty()
            && !token.starts_with('0')
            && token.bytes().all(|b| b.is_ascii_digit()));
    if valid { token.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolves_nested_objects_and_arrays() {
        let doc = json!({"kubernetes.io": {"namespace": "prod"}, "san": {"uri": ["a", "b"]}});
        let p = Pointer::parse("/kubernetes.io/namespace").unwrap();
        assert_eq!(p.resolve(&doc), Some(&json!("prod")));
        assert_eq!(
            Pointer::parse("/san/uri/1").unwrap().resolve(&doc),
            Some(&json!("b"))
        );
        assert_eq!(Pointer::parse("/san/uri/2").unwrap().resolve(&doc), None);
        assert_eq!(Pointer::parse("/san/uri/01").unwrap().resolve(&doc), None);
        assert_eq!(Pointer::parse("/san/uri/-").unwrap().resolve(&doc), None);
        assert_eq!(Pointer::parse("/missing/x").unwrap().resolve(&doc), None);
        assert_eq!(Pointer::parse("").unwrap().resolve(&doc), Some(&doc));
    }

    #[test]
    fn escapes_follow_rfc_6901() {
        let doc = json!({"a/b": 1, "m~n": 2, "~1": 3, "": 4});
        assert_eq!(
            Pointer::parse("/a~1b").unwrap().resolve(&doc),
            Some(&json!(1))
        );
        assert_eq!(
            Pointer::parse("/m~0n").unwrap().resolve(&doc),
            Some(&json!(2))
        );
        // `~01` unescapes to `~1`, never to `/`.
        assert_eq!(
            Pointer::parse("/~01").unwrap().resolve(&doc),
            Some(&json!(3))
        );
        assert_eq!(Pointer::parse("/").unwrap().resolve(&doc), Some(&json!(4)));
    }

    #[test]
    fn malformed_pointers_are_refused() {
        assert!(matches!(
            Pointer::parse("ref"),
            Err(PointerError::NoLeadingSlash(_))
        ));
        assert!(matches!(
            Pointer::parse("/a~2"),
            Err(PointerError::BadEscape(_))
        ));
        assert!(matches!(
            Pointer::parse("/a~"),
            Err(PointerError::BadEscape(_))
        ));
    }
}
