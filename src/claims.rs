//! The claims of a credbroker JWT (SPEC §5.1), as relying parties and the broker read them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JWT `aud`: one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// The audiences as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a.clone()],
            Audience::Many(v) => v.clone(),
        }
    }

    /// Whether `aud` names `wanted`.
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(v) => v.iter().any(|a| a == wanted),
        }
    }
}

/// The `att` claim: how the credential's line was first attested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationClaim {
    pub attestor: String,
    pub kind: String,
}

/// The claims every credbroker JWT carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub owner: String,
    pub att: AttestationClaim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
    pub src: String,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl Claims {
    /// The scopes, split on spaces.
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `cnf.x5t#S256` thumbprint, when the token is bound to a certificate.
    pub fn certificate_thumbprint(&self) -> Option<&str> {
        self.cnf.as_ref()?.get("x5t#S256")?.as_str()
    }

    /// The SPIFFE IDs in the `act` chain, outermost (current actor) first.
    pub fn actors(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut act = self.act.as_ref();
        while let Some(a) = act {
            match a.get("sub").and_then(Value::as_str) {
                Some(sub) => out.push(sub.to_string()),
                None => break,
            }
            act = a.get("act");
        }
        out
    }
}
