//! The token exchange that `bench_token` and `bench_instructions` drive: a platform issuer,
//! a token it signed, the broker's config and the request's form.

use std::path::Path;

use josekit::jwk::Jwk;
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jws::alg::rsassa::RsassaJwsSigner;
use josekit::jws::{JwsHeader, RS256};
use josekit::jwt::{self, JwtPayload};
use serde_json::{Map, Value, json};

pub const ISSUER: &str = "https://ci.bench";
pub const FORM: &str = "application/x-www-form-urlencoded";

/// An RS256 issuer (2048 bits, kid `bench-1`) and a CI-like token of it for repository
/// `acme/web`, valid for an hour.
pub struct Platform {
    pub rsa: RsaKeyPair,
    pub public_jwk: Jwk,
    pub token: String,
    signer: RsassaJwsSigner,
}

/// Generates the issuer and writes its JWKS to `dir/bench-jwks.json`, where
/// [`config`] points the broker.
pub fn platform(dir: &Path) -> Platform {
    let rsa = RS256.generate_key_pair(2048).expect("rsa");
    let mut private = rsa.to_jwk_private_key();
    private.set_key_id("bench-1");
    let mut public_jwk = rsa.to_jwk_public_key();
    public_jwk.set_key_id("bench-1");
    let jwks = json!({"keys": [serde_json::to_value(public_jwk.as_ref()).expect("jwk")]});
    std::fs::write(
        dir.join("bench-jwks.json"),
        serde_json::to_vec(&jwks).expect("jwks"),
    )
    .expect("write jwks");
    let mut platform = Platform {
        rsa,
        public_jwk,
        token: String::new(),
        signer: RS256.signer_from_jwk(&private).expect("signer"),
    };
    platform.token = platform.token_for("acme/web");
    platform
}

impl Platform {
    /// A token of a CI job of `repository` (`acme/...` for the rule of [`config`]): each
    /// repository is an identity of its own.
    pub fn token_for(&self, repository: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims: Map<String, Value> = match json!({
            "iss": ISSUER, "aud": "credbroker", "sub": format!("repo:{repository}:ref:refs/heads/main"),
            "repository": repository, "ref": "refs/heads/main",
            "iat": now, "nbf": now, "exp": now + 3600,
        }) {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id("bench-1");
        jwt::encode_with_signer(
            &JwtPayload::from_map(claims).expect("claims"),
            &header,
            &self.signer,
        )
        .expect("sign")
    }
}

/// The broker's `broker.toml`; `store` is the `[revocation]` table's store lines.
pub fn config(store: &str) -> String {
    format!(
        r#"trust_domain = "example.org"
issuer = "https://broker.bench"
[server]
listen_http = "127.0.0.1:0"
[jwt]
signing_keys = ["jwt-es256.key"]
[revocation]
{store}
[[attestor]]
name = "ci"
kind = "jwt"
issuer = "{ISSUER}"
jwks_file = "bench-jwks.json"
audiences = ["credbroker"]
[[rule]]
name = "deploy"
attestor = "ci"
owner = "team-bench"
match = {{ "/repository" = "acme/*", "/ref" = "refs/heads/main" }}
spiffe_id = "spiffe://example.org/ci/{{/repository}}"
audiences = ["deploy-api"]
"#
    )
}

/// The token-exchange form for `token`, for audience `deploy-api`.
pub fn form(token: &str) -> String {
    serde_urlencoded::to_string([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("subject_token", token),
        ("audience", "deploy-api"),
    ])
    .expect("form")
}
