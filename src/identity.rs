//! SPIFFE IDs and trust domains, validated per the SPIFFE-ID standard.
//!
//! Parsed once at the edge; everything inside the broker holds a [`SpiffeId`] and can
//! trust that it is well formed.

use std::fmt;

/// The most bytes a SPIFFE ID may have (SPIFFE-ID §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The most bytes a trust domain name may have.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("must start with \"spiffe://\"")]
    Scheme,
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain may contain only lowercase letters, digits, '.', '-' and '_'")]
    TrustDomainChars,
    #[error("trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    #[error("path segment is empty")]
    EmptySegment,
    #[error("path segment is '.' or '..'")]
    DotSegment,
    #[error("path segment {0:?} has a character outside [A-Za-z0-9._-]")]
    SegmentChars(String),
    #[error("path ends with '/'")]
    TrailingSlash,
    #[error("a SPIFFE ID may not carry a query or fragment")]
    QueryOrFragment,
    #[error("longer than 2048 bytes")]
    TooLong,
    #[error("belongs to trust domain {found:?}, not {expected:?}")]
    ForeignTrustDomain { expected: String, found: String },
}

/// A trust domain name such as `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a bare trust domain name (no scheme).
    pub fn parse(name: &str) -> Result<Self, IdentityError> {
        if name.is_empty() {
            return Err(IdentityError::EmptyTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(IdentityError::TrustDomainTooLong);
        }
        if !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        }) {
            return Err(IdentityError::TrustDomainChars);
        }
        Ok(Self(name.to_string()))
    }

    /// The name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<name>`, the trust domain's own ID.
    pub fn id_string(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated SPIFFE ID: `spiffe://<trust-domain>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (the first '/' after the trust domain).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID. A bare trust domain ID (no path) is accepted.
    pub fn parse(id: &str) -> Result<Self, IdentityError> {
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong);
        }
        let rest = id.strip_prefix("spiffe://").ok_or(IdentityError::Scheme)?;
        if rest.contains(['?', '#']) {
            return Err(IdentityError::QueryOrFragment);
        }
        let (domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        TrustDomain::parse(domain)?;
        validate_path(path)?;
        Ok(Self {
            id: id.to_string(),
            path_start: "spiffe://".len() + domain.len(),
        })
    }

    /// Parses an ID and checks that it belongs to `domain`.
    pub fn parse_in(id: &str, domain: &TrustDomain) -> Result<Self, IdentityError> {
        let parsed = Self::parse(id)?;
        if parsed.trust_domain() != domain.as_str() {
            return Err(IdentityError::ForeignTrustDomain {
                expected: domain.as_str().to_string(),
                found: parsed.trust_domain().to_string(),
            });
        }
        Ok(parsed)
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.path_start]
    }

    /// The path, starting with '/' (empty for a trust domain ID).
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Validates a SPIFFE ID path (`""` or `/seg/seg…`).
fn validate_path(path: &str) -> Result<(), IdentityError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(IdentityError::TrailingSlash);
    }
    for segment in path[1..].split('/') {
        validate_segment(segment)?;
    }
    Ok(())
}

/// Validates one path segment: non-empty, not `.`/`..`, only `[A-Za-z0-9._-]`.
pub fn validate_segment(segment: &str) -> Result<(), IdentityError> {
    if segment.is_empty() {
        return Err(IdentityError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(IdentityError::DotSegment);
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(IdentityError::SegmentChars(truncate(segment, 64)));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse_and_expose_parts() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/web");
        assert!(SpiffeId::parse("spiffe://example.org").is_ok());
    }

    #[test]
    fn invalid_ids_are_refused_with_the_reason() {
        let cases = [
            ("http://example.org/x", IdentityError::Scheme),
            ("spiffe:///x", IdentityError::EmptyTrustDomain),
            ("spiffe://Example.org/x", IdentityError::TrustDomainChars),
            ("spiffe://example.org/a//b", IdentityError::EmptySegment),
            ("spiffe://example.org/a/../b", IdentityError::DotSegment),
            ("spiffe://example.org/a/./b", IdentityError::DotSegment),
            ("spiffe://example.org/a/", IdentityError::TrailingSlash),
            ("spiffe://example.org/a?x=1", IdentityError::QueryOrFragment),
            ("spiffe://example.org/a#f", IdentityError::QueryOrFragment),
        ];
        for (input, expected) in cases {
            assert_eq!(SpiffeId::parse(input), Err(expected), "{input}");
        }
        assert!(matches!(
            SpiffeId::parse("spiffe://example.org/a%2Fb"),
            Err(IdentityError::SegmentChars(_))
        ));
        let long = format!("spiffe://example.org/{}", "a".repeat(2100));
        assert_eq!(SpiffeId::parse(&long), Err(IdentityError::TooLong));
    }

    #[test]
    fn foreign_trust_domains_are_refused() {
        let td = TrustDomain::parse("example.org").unwrap();
        assert!(SpiffeId::parse_in("spiffe://example.org/x", &td).is_ok());
        assert!(matches!(
            SpiffeId::parse_in("spiffe://evil.org/x", &td),
            Err(IdentityError::ForeignTrustDomain { .. })
        ));
    }
}
