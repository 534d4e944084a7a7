//! SPIFFE ID templates: `spiffe://example.org/ci/github/{/repository}`.
//!
//! A placeholder is a JSON Pointer into the claims. The rendered ID is validated as a whole,
//! so a claim value can add segments (`acme/web`) but can never smuggle in a dot segment, an
//! empty segment, an encoded slash or another trust domain: that is a denial, never a rewrite.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use super::condition::{Glob, truncate};
use super::pointer::Pointer;
use crate::identity::{IdentityError, SpiffeId, TrustDomain};

const SCHEME: &str = "spiffe://";

/// A compiled `spiffe_id` template.
#[derive(Debug, Clone)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    /// Accepts every ID the template could render (placeholders = one or more bytes).
    shape: Glob,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Claim(Pointer),
}

/// Why a template could not be rendered for these claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    Missing {
        claim: String,
    },
    NotText {
        claim: String,
    },
    Empty {
        claim: String,
    },
    /// The rendered text is not a valid SPIFFE ID in the trust domain; `claim` names the
    /// value responsible (pointer, shown value) when it can be told.
    Invalid {
        claim: Option<(String, String)>,
        reason: IdentityError,
    },
    /// The rendered ID is the bare trust domain, which names no workload.
    NoPath {
        id: String,
    },
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Missing { claim } => {
                write!(
                    f,
                    "claim {claim} is missing, so the SPIFFE ID cannot be built"
                )
            }
            RenderError::NotText { claim } => write!(
                f,
                "claim {claim} is not a string, so it cannot be part of a SPIFFE ID"
            ),
            RenderError::Empty { claim } => write!(
                f,
                "claim {claim} is empty, which would make an invalid SPIFFE ID (empty path segment)"
            ),
            RenderError::Invalid {
                claim: Some((pointer, value)),
                reason,
            } => write!(
                f,
                "claim {pointer} = {value} would make an invalid SPIFFE ID: {reason}"
            ),
            RenderError::Invalid {
                claim: None,
                reason,
            } => {
                write!(f, "the rendered SPIFFE ID would be invalid: {reason}")
            }
            RenderError::NoPath { id } => write!(
                f,
                "the rendered SPIFFE ID {id:?} is the trust domain itself, not a workload identity"
            ),
        }
    }
}

impl Template {
    /// Parses a template and checks its literal parts against the trust domain.
    /// Placeholders may appear only in the path (or make up the whole ID, as `{/sub}`).
    pub fn compile(text: &str, trust_domain: &TrustDomain) -> Result<Self, String> {
        let parts = parse_parts(text)?;
        match parts.first() {
            None => return Err("is empty".into()),
            Some(Part::Literal(lit)) if lit.starts_with(SCHEME) => {
                check_literal_prefix(lit, parts.len() > 1, trust_domain)?;
                // Substituting a plain segment for each placeholder shows whether the
                // literal text can ever form a valid ID.
                let sample: String = parts
                    .iter()
                    .map(|p| match p {
                        Part::Literal(l) => l.as_str(),
                        Part::Claim(_) => "x",
                    })
                    .collect();
                let id = SpiffeId::parse_in(&sample, trust_domain)
                    .map_err(|e| format!("cannot produce a valid SPIFFE ID: {e}"))?;
                if id.path().is_empty() {
                    return Err("names the trust domain itself, not a workload path".into());
                }
            }
            Some(Part::Literal(_)) => {
                return Err(format!(
                    "must start with \"spiffe://{trust_domain}/\" or be a claim placeholder such as \"{{/sub}}\""
                ));
            }
            Some(Part::Claim(_)) => {
                // The leading claim supplies scheme and trust domain (checked at render);
                // what follows may only be path text.
                for part in &parts {
                    if let Part::Literal(l) = part
                        && let Some(c) = l.chars().find(|c| !is_path_char(*c))
                    {
                        return Err(format!(
                            "cannot produce a valid SPIFFE ID: {c:?} is not allowed in a SPIFFE ID path"
                        ));
                    }
                }
            }
        }
        let shape = Glob::for_template(parts.iter().map(|p| match p {
            Part::Literal(l) => Some(l.as_str()),
            Part::Claim(_) => None,
        }));
        Ok(Self {
            source: text.to_string(),
            parts,
            shape,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Substitutes claim values and validates the result as a SPIFFE ID in `trust_domain`.
    pub fn render(
        &self,
        claims: &Value,
        trust_domain: &TrustDomain,
    ) -> Result<SpiffeId, RenderError> {
        let mut out = String::with_capacity(self.source.len() + 32);
        let mut values: Vec<(&Pointer, Cow<'_, str>)> = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Claim(pointer) => {
                    let value = claim_text(pointer, claims)?;
                    out.push_str(&value);
                    values.push((pointer, value));
                }
            }
        }
        let id = SpiffeId::parse_in(&out, trust_domain).map_err(|reason| {
            // Name the claim to blame: the only one, or the first whose value alone
            // could not sit in a path.
            let culprit = if values.len() == 1 {
                values.first()
            } else {
                values.iter().find(|(_, v)| !is_plain_path(v))
            };
            RenderError::Invalid {
                claim: culprit.map(|(p, v)| (p.to_string(), format!("{:?}", truncate(v)))),
                reason,
            }
        })?;
        if id.path().is_empty() {
            return Err(RenderError::NoPath {
                id: truncate(id.as_str()),
            });
        }
        Ok(id)
    }

    /// Whether some claims could render exactly `id` (used when a credential comes back
    /// for renewal and only its identity, not the original claims, is known).
    pub fn could_produce(&self, id: &SpiffeId) -> bool {
        self.shape.matches(id.as_str())
    }
}

/// Splits `a{/p}b` into literal and placeholder parts.
fn parse_parts(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(Part::Literal(rest.to_string()));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => {
                return Err("has a '}' without a matching '{'".into());
            }
            Some(i) => {
                if i > 0 {
                    parts.push(Part::Literal(rest[..i].to_string()));
                }
                let after = &rest[i + 1..];
                let end = after
                    .find(['{', '}'])
                    .filter(|&j| after.as_bytes()[j] == b'}')
                    .ok_or("has a '{' without a matching '}'")?;
                let pointer = Pointer::parse(&after[..end]).map_err(|e| e.to_string())?;
                if pointer.is_root() {
                    return Err("has an empty placeholder `{}`; write a claim like `{/sub}`".into());
                }
                parts.push(Part::Claim(pointer));
                rest = &after[end + 1..];
            }
        }
    }
    Ok(parts)
}

/// `spiffe://<td>/…` with every placeholder after the trust domain's closing slash.
fn check_literal_prefix(
    literal: &str,
    has_placeholders: bool,
    trust_domain: &TrustDomain,
) -> Result<(), String> {
    let rest = &literal[SCHEME.len()..];
    let domain = match rest.find('/') {
        Some(i) => &rest[..i],
        None if has_placeholders => {
            return Err(
                "placeholders may appear only in the path, after \"spiffe://<trust domain>/\""
                    .into(),
            );
        }
        None => rest,
    };
    if domain != trust_domain.as_str() {
        return Err(format!(
            "trust domain {domain:?} is not this broker's trust domain {:?}",
            trust_domain.as_str()
        ));
    }
    Ok(())
}

/// The claim as text: strings as they are, numbers and booleans as their JSON text.
fn claim_text<'v>(pointer: &Pointer, claims: &'v Value) -> Result<Cow<'v, str>, RenderError> {
    let claim = || pointer.to_string();
    let text = match pointer.resolve(claims) {
        None => return Err(RenderError::Missing { claim: claim() }),
        Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
        Some(Value::Number(n)) => Cow::Owned(n.to_string()),
        Some(Value::Bool(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Some(_) => return Err(RenderError::NotText { claim: claim() }),
    };
    if text.is_empty() {
        return Err(RenderError::Empty { claim: claim() });
    }
    Ok(text)
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// A value that can stand in a path by itself: path characters, no empty or dot segments.
fn is_plain_path(value: &str) -> bool {
    value.chars().all(is_path_char)
        && value
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    fn tpl(text: &str) -> Template {
        Template::compile(text, &td()).unwrap()
    }

    #[test]
    fn renders_claims_into_the_path() {
        let t = tpl("spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/sa}");
        let id = t
            .render(
                &json!({"kubernetes.io": {"namespace": "prod"}, "sa": "web"}),
                &td(),
            )
            .unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/prod/sa/web");
    }

    #[test]
    fn slashes_in_values_make_several_valid_segments() {
        let t = tpl("spiffe://example.org/ci/github/{/repository}");
        let id = t.render(&json!({"repository": "acme/web"}), &td()).unwrap();
        assert_eq!(id.path(), "/ci/github/acme/web");
    }

    #[test]
    fn numbers_render_as_their_text() {
        let t = tpl("spiffe://example.org/project/{/id}");
        let id = t.render(&json!({"id": 1234}), &td()).unwrap();
        assert_eq!(id.path(), "/project/1234");
    }

    #[test]
    fn every_escape_is_a_denial_with_the_reason() {
        let t = tpl("spiffe://example.org/ci/{/repository}/{/ref}");
        let render = |repo: &str| t.render(&json!({"repository": repo, "ref": "main"}), &td());
        let cases: [(&str, IdentityError); 7] = [
            ("../x", IdentityError::DotSegment),
            ("x/..", IdentityError::DotSegment),
            (".", IdentityError::DotSegment),
            ("a%2Fb", IdentityError::SegmentChars("a%2Fb".into())),
            ("a//b", IdentityError::EmptySegment),
            ("/a", IdentityError::EmptySegment),
            ("a?x=1", IdentityError::QueryOrFragment),
        ];
        for (value, reason) in cases {
            match render(value) {
                Err(RenderError::Invalid {
                    claim: Some((p, shown)),
                    reason: r,
                }) => {
                    assert_eq!(p, "/repository", "{value}");
                    assert_eq!(shown, format!("{value:?}"));
                    assert_eq!(r, reason, "{value}");
                }
                other => panic!("{value:?}: {other:?}"),
            }
        }
        assert_eq!(
            render(""),
            Err(RenderError::Empty {
                claim: "/repository".into()
            })
        );
        let msg = render("../x").unwrap_err().to_string();
        assert!(msg.contains("/repository") && msg.contains("'..'"), "{msg}");
    }

    #[test]
    fn missing_and_non_text_claims_are_denials() {
        let t = tpl("spiffe://example.org/host/{/cn}");
        assert_eq!(
            t.render(&json!({}), &td()),
            Err(RenderError::Missing {
                claim: "/cn".into()
            })
        );
        assert_eq!(
            t.render(&json!({"cn": ["a"]}), &td()),
            Err(RenderError::NotText {
                claim: "/cn".into()
            })
        );
    }

    #[test]
    fn whole_id_templates_stay_in_the_trust_domain() {
        let t = tpl("{/sub}");
        let ok = t.render(
            &json!({"sub": "spiffe://example.org/ns/prod/sa/orchestrator"}),
            &td(),
        );
        assert_eq!(ok.unwrap().path(), "/ns/prod/sa/orchestrator");
        match t.render(&json!({"sub": "spiffe://evil.org/ns/prod"}), &td()) {
            Err(RenderError::Invalid {
                reason: IdentityError::ForeignTrustDomain { .. },
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.render(&json!({"sub": "spiffe://example.org"}), &td()),
            Err(RenderError::NoPath { .. })
        ));
        assert!(matches!(
            t.render(&json!({"sub": "web"}), &td()),
            Err(RenderError::Invalid {
                reason: IdentityError::Scheme,
                ..
            })
        ));
    }

    #[test]
    fn invalid_literal_parts_are_compile_errors() {
        for bad in [
            "spiffe://other.org/x/{/a}",
            "spiffe://example.org/x//{/a}",
            "spiffe://example.org/./{/a}",
            "spiffe://example.org/x/{/a}/",
            "spiffe://example.org/a b/{/a}",
            "spiffe://{/td}/x",
            "spiffe://example.org",
            "https://example.org/{/a}",
            "example.org/{/a}",
            "spiffe://example.org/{/a",
            "spiffe://example.org/}/a",
            "spiffe://example.org/{}",
            "spiffe://example.org/{ref}",
            "{/sub}/a b",
            "",
        ] {
            assert!(Template::compile(bad, &td()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn could_produce_checks_the_shape() {
        let t = tpl("spiffe://example.org/ns/{/ns}/sa/{/sa}");
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        assert!(t.could_produce(&id("spiffe://example.org/ns/prod/sa/web")));
        assert!(!t.could_produce(&id("spiffe://example.org/ns/prod/web")));
        assert!(!t.could_produce(&id("spiffe://example.org/host/web")));
        assert!(tpl("{/sub}").could_produce(&id("spiffe://example.org/anything")));
        let fixed = tpl("spiffe://example.org/fixed");
        assert!(fixed.could_produce(&id("spiffe://example.org/fixed")));
        assert!(!fixed.could_produce(&id("spiffe://example.org/fixed2")));
    }
}
