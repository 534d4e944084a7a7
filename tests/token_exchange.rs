//! The token-exchange door end to end: real binary, real HTTPS, platform tokens from a
//! test issuer. Covers SPEC §6.1, §5.1 and the JWT items of §12.

mod support;

use serde_json::{Value, json};
use support::broker::{BrokerProcess, KeyDir, base_config, client, decode_segment, exchange_form};
use support::issuer::{ISSUER, TestIssuer, now};

struct Fixture {
    keys: KeyDir,
    issuer: TestIssuer,
    broker: BrokerProcess,
    http: reqwest::Client,
}

fn rules() -> String {
    format!(
        r#"
[[attestor]]
name = "ci"
kind = "jwt"
issuer = "{ISSUER}"
jwks_file = "ci-jwks.json"
audiences = ["credbroker"]
algorithms = ["RS256", "ES256"]
leeway = "30s"

[[attestor]]
name = "ci-once"
kind = "jwt"
issuer = "https://once.test"
jwks_file = "ci-jwks.json"
audiences = ["credbroker"]
replay = "reject"

[[rule]]
name = "deploy-from-main"
attestor = "ci"
owner = "team-platform"
match = {{ "/repository" = "acme/*", "/ref" = "refs/heads/main" }}
spiffe_id = "spiffe://example.org/ci/github/{{/repository}}"
credentials = ["jwt"]
audiences = ["deploy-api", "inventory"]
scopes = ["deploy:staging", "deploy:prod"]
max_ttl = "15m"

[[rule]]
name = "teams"
attestor = "ci"
owner = "team-security"
match = {{ "/team" = "**" }}
spiffe_id = "spiffe://example.org/team/{{/team}}"
audiences = ["inventory"]

[[rule]]
name = "rate-limited"
attestor = "ci"
owner = "team-platform"
match = {{ "/repository" = "rate/limited" }}
spiffe_id = "spiffe://example.org/rate"
audiences = ["inventory"]
rate = "2/min"

[[rule]]
name = "office-only"
attestor = "ci"
owner = "team-platform"
match = {{ "/repository" = "cidr/only" }}
spiffe_id = "spiffe://example.org/office"
audiences = ["inventory"]
source_cidrs = ["10.0.0.0/8"]

[[rule]]
name = "one-time"
attestor = "ci-once"
owner = "team-platform"
spiffe_id = "spiffe://example.org/once/{{/repository}}"
audiences = ["inventory"]
"#
    )
}

fn start() -> Fixture {
    let keys = KeyDir::generate();
    let issuer = TestIssuer::new();
    issuer.write_jwks(&keys.path("ci-jwks.json"));
    let config = base_config(&keys, "store = \"memory\"") + &rules();
    let broker = BrokerProcess::start(&keys, &config);
    let http = client(&keys, None);
    Fixture {
        keys,
        issuer,
        broker,
        http,
    }
}

impl Fixture {
    async fn exchange(&self, token: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(self.broker.url("/v1/token"))
            .form(&exchange_form(token, extra))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Asserts an RFC 6749 error and that nothing secret leaked; returns the description.
    async fn expect_error(
        &self,
        token: &str,
        extra: &[(&str, &str)],
        status: u16,
        code: &str,
    ) -> String {
        let (got_status, body) = self.exchange(token, extra).await;
        assert_eq!(got_status, status, "unexpected status, body: {body}");
        assert_eq!(body["error"], code, "body: {body}");
        let description = body["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            !description.is_empty(),
            "error_description must explain: {body}"
        );
        assert_no_secret(&body.to_string(), token);
        description
    }
}

fn assert_no_secret(text: &str, token: &str) {
    assert!(!text.contains(token), "the token leaked into: {text}");
    if let Some(sig) = token.rsplit('.').next()
        && sig.len() > 16
    {
        assert!(!text.contains(sig), "the signature leaked into: {text}");
    }
}

#[tokio::test]
async fn platform_token_is_exchanged_for_a_jwt_svid() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let resp = f
        .http
        .post(f.broker.url("/v1/token"))
        .form(&exchange_form(
            &token,
            &[("audience", "deploy-api"), ("scope", "deploy:staging")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // RFC 6749 §5.1: a JSON body that no cache keeps.
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["pragma"], "no-cache");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "deploy:staging");

    let jwt = body["access_token"].as_str().unwrap();
    let header = decode_segment(jwt, 0);
    let header_keys: Vec<&String> = header.as_object().unwrap().keys().collect();
    assert_eq!(
        header_keys.len(),
        3,
        "header must be exactly alg, kid, typ: {header}"
    );
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");

    let claims = decode_segment(jwt, 1);
    assert_eq!(claims["iss"], "https://broker.test");
    assert_eq!(claims["sub"], "spiffe://example.org/ci/github/acme/web");
    assert_eq!(claims["aud"], "deploy-api");
    assert_eq!(claims["scope"], "deploy:staging");
    assert_eq!(claims["owner"], "team-platform");
    assert_eq!(claims["rule"], "deploy-from-main");
    assert_eq!(claims["att"], json!({"attestor": "ci", "kind": "jwt"}));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(
        claims["jti"].as_str().unwrap().len() >= 22,
        "jti carries >= 128 bits"
    );
    assert!(claims["src"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        claims.get("cnf").is_none(),
        "no client certificate, so no binding"
    );
    assert!(
        !claims.to_string().contains(&token),
        "the platform token is never embedded"
    );

    // The signature verifies with the key the JWKS publishes under that kid.
    let jwks: Value = f
        .http
        .get(f.broker.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the signing kid is published");
    let jwk = josekit::jwk::Jwk::from_map(jwk.as_object().unwrap().clone()).unwrap();
    let verifier = josekit::jws::ES256.verifier_from_jwk(&jwk).unwrap();
    let (payload, _) = josekit::jwt::decode_with_verifier(jwt, &verifier).unwrap();
    assert_eq!(
        payload.subject(),
        Some("spiffe://example.org/ci/github/acme/web")
    );
}

#[tokio::test]
async fn es256_platform_tokens_and_defaults_work() {
    let f = start();
    let token = f
        .issuer
        .sign_es256(&TestIssuer::claims("acme/api", "refs/heads/main"));
    let (status, body) = f.exchange(&token, &[]).await;
    assert_eq!(status, 200, "{body}");
    let claims = decode_segment(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(
        claims["aud"], "deploy-api",
        "default audience is the rule's first"
    );
    assert!(
        claims.get("scope").is_none(),
        "no scope requested, none granted"
    );
    assert!(body.get("scope").is_none());
}

#[tokio::test]
async fn requested_ttl_is_clamped_to_the_rule_max_and_the_response_says_so() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let (status, body) = f.exchange(&token, &[("ttl", "86400")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 900, "rule max_ttl = 15m");
    let (status, body) = f.exchange(&token, &[("ttl", "60")]).await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], 60);
}

#[tokio::test]
async fn several_audiences_give_an_array_aud() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let (status, body) = f
        .exchange(
            &token,
            &[("audience", "deploy-api"), ("resource", "inventory")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let claims = decode_segment(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["aud"], json!(["deploy-api", "inventory"]));
}

#[tokio::test]
async fn audiences_and_scopes_outside_the_rule_are_refused() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let d = f
        .expect_error(&token, &[("audience", "payments")], 400, "invalid_target")
        .await;
    assert!(d.contains("payments"), "{d}");
    let d = f
        .expect_error(
            &token,
            &[("scope", "deploy:staging admin")],
            400,
            "invalid_scope",
        )
        .await;
    assert!(d.contains("admin"), "{d}");
}

#[tokio::test]
async fn forged_and_unsigned_tokens_are_refused() {
    let f = start();
    let claims = TestIssuer::claims("acme/web", "refs/heads/main");
    let none = TestIssuer::unsigned(&claims);
    let d = f.expect_error(&none, &[], 400, "invalid_request").await;
    assert!(
        d.to_lowercase().contains("none") || d.contains("alg"),
        "{d}"
    );
    let hs = f.issuer.forge_hs256_with_public_key(&claims);
    let d = f.expect_error(&hs, &[], 400, "invalid_request").await;
    assert!(d.contains("HS256"), "{d}");
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let f = start();
    let token = f.issuer.sign_with_kid(
        &TestIssuer::claims("acme/web", "refs/heads/main"),
        "rotated-away",
    );
    let d = f.expect_error(&token, &[], 400, "invalid_request").await;
    assert!(d.contains("rotated-away"), "{d}");
}

#[tokio::test]
async fn wrong_issuer_and_audience_are_refused() {
    let f = start();
    let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
    claims.insert("iss".into(), json!("https://evil.test"));
    let d = f
        .expect_error(&f.issuer.sign_rs256(&claims), &[], 400, "invalid_request")
        .await;
    assert!(d.contains("evil.test"), "{d}");

    let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
    claims.insert("aud".into(), json!(["someone-else"]));
    let d = f
        .expect_error(&f.issuer.sign_rs256(&claims), &[], 400, "invalid_request")
        .await;
    assert!(d.contains("aud"), "{d}");
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway() {
    let f = start();
    let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
    claims.insert("exp".into(), json!(now() - 120));
    let d = f
        .expect_error(&f.issuer.sign_rs256(&claims), &[], 400, "invalid_request")
        .await;
    assert!(d.contains("expired"), "{d}");

    // Within the 30 s leeway an expired token still works.
    let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
    claims.insert("exp".into(), json!(now() - 5));
    let (status, body) = f.exchange(&f.issuer.sign_rs256(&claims), &[]).await;
    assert_eq!(status, 200, "{body}");

    let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
    claims.insert("nbf".into(), json!(now() + 600));
    let d = f
        .expect_error(&f.issuer.sign_rs256(&claims), &[], 400, "invalid_request")
        .await;
    assert!(d.contains("not valid yet") || d.contains("nbf"), "{d}");
}

#[tokio::test]
async fn tampered_payload_and_signature_are_refused() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = decode_segment(&token, 1);
    claims["repository"] = json!("acme/admin");
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        support::issuer::b64(&claims),
        parts[2]
    );
    f.expect_error(&tampered_payload, &[], 400, "invalid_request")
        .await;

    let mut sig = parts[2].to_string();
    let flipped = if sig.ends_with('A') { 'B' } else { 'A' };
    sig.pop();
    sig.push(flipped);
    let tampered_sig = format!("{}.{}.{sig}", parts[0], parts[1]);
    f.expect_error(&tampered_sig, &[], 400, "invalid_request")
        .await;

    for garbage in ["not-a-jwt", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9..sig"] {
        f.expect_error(garbage, &[], 400, "invalid_request").await;
    }
}

#[tokio::test]
async fn claims_that_would_escape_the_spiffe_path_are_denied_with_the_reason() {
    let f = start();
    for (team, why) in [
        ("../admin", "'.' or '..'"),
        ("a%2Fb", "character"),
        ("", "empty"),
        ("a//b", "empty"),
    ] {
        let mut claims = TestIssuer::claims("x/y", "refs/heads/x");
        claims.insert("team".into(), json!(team));
        let d = f
            .expect_error(&f.issuer.sign_rs256(&claims), &[], 400, "invalid_request")
            .await;
        assert!(d.contains(why), "team {team:?}: {d}");
    }
}

#[tokio::test]
async fn a_token_no_rule_matches_is_denied_naming_the_closest_rule() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/dev"));
    let d = f.expect_error(&token, &[], 400, "invalid_request").await;
    assert!(d.contains("deploy-from-main"), "{d}");
    assert!(d.contains("/ref"), "{d}");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("rate/limited", "refs/heads/main"));
    for _ in 0..2 {
        let (status, body) = f.exchange(&token, &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    let resp = f
        .http
        .post(f.broker.url("/v1/token"))
        .form(&exchange_form(&token, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "slow_down");
}

#[tokio::test]
async fn source_cidrs_refuse_callers_outside() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("cidr/only", "refs/heads/main"));
    let d = f.expect_error(&token, &[], 400, "invalid_request").await;
    assert!(d.contains("127.0.0.1") || d.contains("source"), "{d}");
}

#[tokio::test]
async fn one_time_tokens_are_refused_on_replay_even_concurrently() {
    let f = start();
    let mut claims = TestIssuer::claims("acme/once", "refs/heads/main");
    claims.insert("iss".into(), json!("https://once.test"));
    let token = f.issuer.sign_rs256(&claims);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let http = f.http.clone();
        let url = f.broker.url("/v1/token");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .form(&exchange_form(&token, &[]))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1, "exactly one of ten concurrent uses succeeds");
    let d = f.expect_error(&token, &[], 400, "invalid_request").await;
    assert!(d.contains("already"), "{d}");
}

#[tokio::test]
async fn protocol_errors_get_rfc_codes() {
    let f = start();
    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let post = |form: Vec<(&'static str, String)>| {
        let http = f.http.clone();
        let url = f.broker.url("/v1/token");
        async move {
            let r = http.post(url).form(&form).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (s, b) = post(vec![("grant_type", "password".into())]).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );

    let (s, b) = post(vec![]).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("grant_type")
    );

    let (s, b) = post(vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        ),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:jwt".into(),
        ),
    ])
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("subject_token")
    );

    let (s, b) = post(vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        ),
        ("subject_token_type", "urn:example:saml".into()),
        ("subject_token", token.clone()),
    ])
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));

    let (s, b) = post(vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        ),
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange".into(),
        ),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:jwt".into(),
        ),
        ("subject_token", token.clone()),
    ])
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("more than once")
    );

    let (s, b) = f
        .exchange(
            &token,
            &[(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:saml2",
            )],
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("requested_token_type")
    );

    // RFC 6749 §3.1: unrecognised parameters are ignored.
    let (s, b) = f.exchange(&token, &[("color", "blue")]).await;
    assert_eq!(s, 200, "{b}");

    let (s, b) = f.exchange(&token, &[("ttl", "soon")]).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));

    let r = f
        .http
        .post(f.broker.url("/v1/token"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn oversized_bodies_and_headers_are_refused() {
    let f = start();
    let big = "a".repeat(64 * 1024);
    let r = f
        .http
        .post(f.broker.url("/v1/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=x&pad={big}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let r = f
        .http
        .get(f.broker.url("/healthz"))
        .header("x-filler", "b".repeat(64 * 1024))
        .send()
        .await;
    match r {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    // The broker is still healthy afterwards.
    let r = f.http.get(f.broker.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn discovery_health_and_metrics_endpoints() {
    let f = start();
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let m: Value = f
            .http
            .get(f.broker.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(m["issuer"], "https://broker.test");
        assert_eq!(m["jwks_uri"], "https://broker.test/.well-known/jwks.json");
        assert_eq!(m["token_endpoint"], "https://broker.test/v1/token");
        assert_eq!(m["tls_client_certificate_bound_access_tokens"], true);
        assert!(
            m["grant_types_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("urn:ietf:params:oauth:grant-type:token-exchange"))
        );
    }
    let r = f
        .http
        .get(f.broker.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );

    let r = f.http.get(f.broker.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = f.http.get(f.broker.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["revocation_mirror_in_sync"], true);

    let token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    assert_eq!(f.exchange(&token, &[]).await.0, 200);
    assert_eq!(f.exchange("junk", &[]).await.0, 400);
    let text = f
        .http
        .get(f.broker.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("credbroker_issued_total"), "{text}");
    assert!(text.contains("credbroker_denied_total"), "{text}");
    assert!(
        text.contains("credbroker_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("credbroker_mirror_staleness_seconds"),
        "{text}"
    );
    // The latency histogram is labelled by route and status, and keeps counting: the
    // recorder is process-wide (other tests add to it too), so the count only grows.
    const REFUSED: &str =
        r#"credbroker_http_request_duration_seconds_count{path="/v1/token",status="400"}"#;
    assert!(
        text.contains(r#"_count{path="/v1/token",status="200"}"#),
        "{text}"
    );
    let count = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(REFUSED))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = count(&text);
    assert!(before >= 1, "{text}");
    assert_eq!(f.exchange("junk", &[]).await.0, 400);
    assert_eq!(f.exchange("junk", &[]).await.0, 400);
    let r = f
        .http
        .get(f.broker.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let metrics = f.http.get(f.broker.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(count(&text) >= before + 2, "{text}");
    assert!(
        text.contains(r#"_count{path="unmatched",status="404"}"#),
        "{text}"
    );

    // Plain HTTP serves the same endpoints when configured.
    let r = support::broker::plain_client()
        .get(f.broker.http_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(f.keys);
}

#[tokio::test]
async fn unreachable_jwks_url_is_a_503_not_a_panic() {
    let keys = KeyDir::generate();
    let issuer = TestIssuer::new();
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let config = base_config(&keys, "store = \"memory\"")
        + &format!(
            r#"
[[attestor]]
name = "remote"
kind = "jwt"
issuer = "{ISSUER}"
jwks_url = "http://127.0.0.1:9/jwks"
audiences = ["credbroker"]

[[rule]]
name = "any"
attestor = "remote"
owner = "team-x"
spiffe_id = "spiffe://example.org/remote"
audiences = ["x"]
"#
        );
    let broker = BrokerProcess::start(&keys, &config);
    let http = client(&keys, None);
    let token = issuer.sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let r = http
        .post(broker.url("/v1/token"))
        .form(&exchange_form(&token, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_no_secret(&body.to_string(), &token);
    // Still alive.
    assert_eq!(
        http.get(broker.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn every_configured_key_is_published_and_the_first_signs() {
    let keys = KeyDir::generate();
    let issuer = TestIssuer::new();
    issuer.write_jwks(&keys.path("ci-jwks.json"));
    std::fs::write(
        keys.path("next-es256.key"),
        credbroker::issue::generate_jwt_key_pem().unwrap(),
    )
    .unwrap();
    let config = (base_config(&keys, "store = \"memory\"") + &rules()).replace(
        "signing_keys = [\"jwt-es256.key\"]",
        "signing_keys = [\"next-es256.key\", \"jwt-es256.key\"]",
    );
    let broker = BrokerProcess::start(&keys, &config);
    let http = client(&keys, None);
    let jwks: Value = http
        .get(broker.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2, "both keys are published: {jwks}");
    let token = issuer.sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let resp: Value = http
        .post(broker.url("/v1/token"))
        .form(&exchange_form(&token, &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = decode_segment(resp["access_token"].as_str().unwrap(), 0);
    assert_eq!(header["kid"], kids[0], "the first configured key signs");
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let keys = KeyDir::generate();
    let issuer = TestIssuer::new();
    issuer.write_jwks(&keys.path("ci-jwks.json"));
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let config = base_config(&keys, "store = \"memory\"") + &rules();
    let broker = BrokerProcess::start_logging(&keys, &config, "debug", log.clone());
    let http = client(&keys, None);
    let good = issuer.sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let denied = issuer.sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/dev"));
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    let mut secrets = vec![
        good.clone(),
        denied.clone(),
        forged.clone(),
        keys.admin_token(),
    ];
    for token in [&good, &denied, &forged] {
        let r: Value = http
            .post(broker.url("/v1/token"))
            .form(&exchange_form(token, &[]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(issued) = r["access_token"].as_str() {
            secrets.push(issued.to_string());
        }
    }
    // An admin call, and a wrong admin token.
    let r = http
        .get(broker.url("/v1/identities"))
        .bearer_auth(keys.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(broker.url("/v1/identities"))
        .bearer_auth("not-the-admin-token-but-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    secrets.push("not-the-admin-token-but-secret".into());
    assert_eq!(secrets.len(), 6, "one token was issued");
    // The audit lines for the issuance and the denial are written before the answers, but
    // reach `log` through the thread reading the broker's output: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = log.lock().unwrap().clone();
        let complete = text.contains("issued") && text.contains("denied");
        if complete || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        text.contains("issued"),
        "the broker logged its work: {text}"
    );
    assert!(text.contains("denied"), "{text}");
    // The log is a pipe here, as under a log shipper: plain `name=value`, no colour codes.
    assert!(text.contains("event=\"issued\""), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "terminal escape codes in a piped log"
    );
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret reached the log");
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!text.contains(sig), "a signature reached the log");
        }
    }
}
