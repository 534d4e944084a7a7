//! Decision tests over real configs (Appendix A and variations).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::attest::SourceId;
use crate::config::Dur;

const BASE: &str = r#"
trust_domain = "example.org"
issuer = "https://broker.example.org:8443"

[server]
listen_http = "127.0.0.1:8080"

[jwt]
signing_keys = ["k"]
default_ttl = "5m"
max_ttl = "1h"

[x509]
ca_cert = "ca.pem"
ca_key = "ca.key"
default_ttl = "10m"
max_ttl = "1h"

[revocation]
store = "memory"

[[attestor]]
name = "github"
kind = "jwt"
issuer = "https://token.actions.githubusercontent.com"
jwks_file = "github.json"
audiences = ["credbroker"]

[[attestor]]
name = "k8s"
kind = "jwt"
issuer = "https://kubernetes.default.svc.cluster.local"
jwks_file = "k8s-jwks.json"
audiences = ["credbroker"]

[[attestor]]
name = "legacy-pki"
kind = "mtls"
ca_bundle = "attestation-ca.pem"

[[attestor]]
name = "bootstrap"
kind = "join_token"
"#;

/// The rules of SPEC Appendix A, verbatim.
const APPENDIX_RULES: &str = r#"
[[rule]]
name = "deploy-from-main"
attestor = "github"
owner = "team-platform"
match = { "/repository" = "acme/*", "/ref" = "refs/heads/main" }
spiffe_id = "spiffe://example.org/ci/github/{/repository}"
credentials = ["jwt"]
audiences = ["deploy-api"]
scopes = ["deploy:staging", "deploy:prod"]
max_ttl = "15m"
rate = "60/min"

[[rule]]
name = "k8s-workloads"
attestor = "k8s"
owner = "team-runtime"
match = { "/kubernetes.io/namespace" = ["prod", "staging"] }
spiffe_id = "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}"
credentials = ["jwt", "x509"]
audiences = ["payments", "ledger"]

[[rule]]
name = "legacy-hosts"
attestor = "legacy-pki"
owner = "team-infra"
match = { "/subject/o" = "acme-hosts" }
spiffe_id = "spiffe://example.org/host/{/subject/cn}"
credentials = ["x509", "jwt"]
audiences = ["inventory"]

[[rule]]
name = "verifiers"
attestor = "k8s"
owner = "team-security"
match = { "/kubernetes.io/namespace" = "infra" }
spiffe_id = "spiffe://example.org/ns/infra/sa/{/kubernetes.io/serviceaccount/name}"
credentials = ["jwt", "x509"]
audiences = ["credbroker"]
scopes = ["credbroker:introspect"]

[[rule]]
name = "orchestrator-delegation"
attestor = "svid"
owner = "team-ai"
match = { "/sub" = "spiffe://example.org/ns/prod/sa/orchestrator" }
spiffe_id = "{/sub}"
credentials = ["jwt"]
audiences = ["payments"]
scopes = []
delegate = ["spiffe://example.org/ns/prod/sa/agent"]
"#;

const ORCHESTRATOR: &str = "spiffe://example.org/ns/prod/sa/orchestrator";
const AGENT: &str = "spiffe://example.org/ns/prod/sa/agent";

fn config(rules: &str) -> Config {
    Config::parse(&format!("{BASE}{rules}"), Path::new("/tmp/broker.toml")).unwrap()
}

fn policy(rules: &str) -> Policy {
    Policy::compile(&config(rules)).unwrap()
}

fn appendix() -> Policy {
    policy(APPENDIX_RULES)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn attestation(attestor: &str, claims: Value) -> Attestation {
    let kind = match attestor {
        "legacy-pki" => AttestorKind::Mtls,
        "bootstrap" => AttestorKind::JoinToken,
        _ => AttestorKind::Jwt,
    };
    Attestation {
        attestor: attestor.into(),
        kind,
        subject: "subject".into(),
        source: SourceId::new(attestor, "subject"),
        claims,
        expires_at: None,
        parent: None,
    }
}

/// A broker credential presented back: `typ` is "jwt" or "x509".
fn svid(subject: &str, typ: &str, rule: &str, audiences: &[&str], scopes: &[&str]) -> Attestation {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Attestation {
        attestor: SVID_ATTESTOR.into(),
        kind: AttestorKind::Svid,
        subject: subject.into(),
        source: SourceId::new("k8s", "root"),
        claims: json!({"sub": subject, "typ": typ, "aud": audiences, "scope": scopes.join(" ")}),
        expires_at: None,
        parent: Some(ParentCredential {
            id: "jti-1".into(),
            rule: rule.into(),
            chain: vec!["jti-0".into()],
            source: SourceId::new("k8s", "root"),
            audiences: strings(audiences),
            scopes: strings(scopes),
        }),
    }
}

fn github(repository: &str, git_ref: &str) -> Attestation {
    attestation(
        "github",
        json!({"repository": repository, "ref": git_ref, "sub": "repo:x"}),
    )
}

fn k8s(namespace: &str, sa: &str) -> Attestation {
    attestation(
        "k8s",
        json!({"kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa}}}),
    )
}

/// What a test asks for; turned into a [`Request`] by [`ask`].
#[derive(Default)]
struct Ask {
    x509: bool,
    audiences: Vec<&'static str>,
    scopes: Vec<&'static str>,
    ttl: Option<u64>,
    caller: Option<&'static str>,
    actor: Option<Actor>,
}

fn ask(p: &Policy, att: &Attestation, a: Ask) -> Result<Grant, Denial> {
    let audiences: Vec<String> = a.audiences.iter().map(|s| s.to_string()).collect();
    let scopes: Vec<String> = a.scopes.iter().map(|s| s.to_string()).collect();
    let req = Request {
        attestation: att,
        credential: if a.x509 {
            CredentialType::X509
        } else {
            CredentialType::Jwt
        },
        audiences: &audiences,
        scopes: &scopes,
        ttl: a.ttl.map(Duration::from_secs),
        caller: a.caller.map(|c| c.parse().unwrap()),
        actor: a.actor.as_ref(),
    };
    p.decide(&req)
}

fn jwt(p: &Policy, att: &Attestation) -> Result<Grant, Denial> {
    ask(p, att, Ask::default())
}

fn actor(spiffe_id: &str, chain: &[&str]) -> Option<Actor> {
    Some(Actor {
        spiffe_id: id(spiffe_id),
        chain: chain.iter().map(|s| id(s)).collect(),
    })
}

// --- compile -----------------------------------------------------------------------------

#[test]
fn appendix_a_compiles_with_its_rates_and_ttls() {
    let p = appendix();
    assert_eq!(p.rules().len(), 5);
    let deploy = p.rule("deploy-from-main").unwrap();
    assert_eq!(
        deploy.rate(),
        Some(RateLimit {
            capacity: 60,
            period: Duration::from_secs(60)
        })
    );
    assert_eq!(
        deploy.max_ttl(CredentialType::Jwt),
        Duration::from_secs(900)
    );
    assert_eq!(
        deploy.default_ttl(CredentialType::Jwt),
        Duration::from_secs(300)
    );
    assert!(p.rule("nope").is_none());
}

fn compile_error(rules: &str) -> (String, String, String) {
    match Policy::compile(&config(rules)) {
        Err(ConfigError::Invalid {
            table,
            key,
            message,
            ..
        }) => (table, key, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

const RULE_HEAD: &str =
    "[[rule]]\nname = \"r\"\nattestor = \"github\"\nowner = \"o\"\naudiences = [\"a\"]\n";

#[test]
fn bad_rates_templates_globs_and_pointers_are_config_errors_naming_the_key() {
    let (table, key, message) = compile_error(&format!(
        "{RULE_HEAD}spiffe_id = \"spiffe://example.org/x\"\nrate = \"10/day\"\n"
    ));
    assert_eq!(table, "rule #1 (\"r\")");
    assert_eq!(key, "rate");
    assert!(message.contains("10/day"), "{message}");

    let (_, key, message) = compile_error(&format!(
        "{RULE_HEAD}spiffe_id = \"spiffe://other.org/{{/sub}}\"\n"
    ));
    assert_eq!(key, "spiffe_id");
    assert!(message.contains("other.org"), "{message}");

    let (_, key, _) = compile_error(&format!(
        "{RULE_HEAD}spiffe_id = \"spiffe://example.org/x\"\nmatch = {{ \"/ref\" = \"refs/***\" }}\n"
    ));
    assert_eq!(key, "match");

    let (_, key, message) = compile_error(&format!(
        "{RULE_HEAD}spiffe_id = \"spiffe://example.org/x\"\nmatch = {{ \"ref\" = \"main\" }}\n"
    ));
    assert_eq!(key, "match");
    assert!(message.contains("JSON Pointer"), "{message}");
}

// --- selection ---------------------------------------------------------------------------

#[test]
fn the_first_matching_rule_in_file_order_wins() {
    let p = policy(
        r#"
[[rule]]
name = "main-only"
attestor = "github"
owner = "a"
match = { "/ref" = "refs/heads/main" }
spiffe_id = "spiffe://example.org/main/{/repository}"
audiences = ["x"]

[[rule]]
name = "any-ref"
attestor = "github"
owner = "b"
spiffe_id = "spiffe://example.org/any/{/repository}"
audiences = ["x"]
"#,
    );
    let g = jwt(&p, &github("acme/web", "refs/heads/main")).unwrap();
    assert_eq!(g.rule, "main-only");
    assert_eq!(g.owner, "a");
    assert_eq!(g.spiffe_id, id("spiffe://example.org/main/acme/web"));
    let g = jwt(&p, &github("acme/web", "refs/heads/dev")).unwrap();
    assert_eq!(g.rule, "any-ref");
    assert_eq!(g.spiffe_id, id("spiffe://example.org/any/acme/web"));
}

#[test]
fn checks_after_selection_deny_instead_of_falling_through() {
    let p = policy(
        r#"
[[rule]]
name = "jwt-only"
attestor = "github"
owner = "a"
spiffe_id = "spiffe://example.org/a/{/repository}"
credentials = ["jwt"]
audiences = ["x"]

[[rule]]
name = "x509-too"
attestor = "github"
owner = "b"
spiffe_id = "spiffe://example.org/b/{/repository}"
credentials = ["jwt", "x509"]
audiences = ["x"]
"#,
    );
    let att = github("acme/web", "refs/heads/main");
    let err = ask(
        &p,
        &att,
        Ask {
            x509: true,
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, Denial::CredentialType { rule, .. } if rule == "jwt-only"),
        "{err:?}"
    );
    assert!(err.to_string().contains("x509"), "{err}");
    assert_eq!(err.kind(), DenialKind::Refused);
}

#[test]
fn appendix_github_rule_grants_the_rendered_identity() {
    let g = jwt(&appendix(), &github("acme/web", "refs/heads/main")).unwrap();
    assert_eq!(g.rule, "deploy-from-main");
    assert_eq!(g.owner, "team-platform");
    assert_eq!(g.spiffe_id, id("spiffe://example.org/ci/github/acme/web"));
    assert_eq!(g.audiences, vec!["deploy-api"]);
    assert!(g.scopes.is_empty());
    assert_eq!(g.ttl, Duration::from_secs(300));
    assert!(!g.clamped);
    assert!(g.bind_to_certificate);
    assert_eq!(g.rate.map(|r| r.capacity), Some(60));
    assert_eq!(g.act, None);
}

#[test]
fn a_denial_names_the_closest_rule_and_its_failed_condition() {
    let err = jwt(&appendix(), &github("acme/web", "refs/heads/dev")).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"no rule matched: closest rule "deploy-from-main" requires /ref = "refs/heads/main" but the token has "refs/heads/dev""#
    );
    assert_eq!(err.kind(), DenialKind::Refused);
}

#[test]
fn a_missing_claim_never_matches_and_is_named() {
    let p = appendix();
    let err = jwt(
        &p,
        &attestation("github", json!({"repository": "acme/web"})),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"no rule matched: closest rule "deploy-from-main" requires /ref = "refs/heads/main" but the token has no /ref"#
    );
}

#[test]
fn closest_rule_has_most_conditions_satisfied_and_ties_go_to_the_earliest() {
    let p = policy(
        r#"
[[rule]]
name = "three"
attestor = "github"
owner = "o"
match = { "/a" = "1", "/b" = "2", "/c" = "3" }
spiffe_id = "spiffe://example.org/x"
audiences = ["x"]

[[rule]]
name = "two"
attestor = "github"
owner = "o"
match = { "/a" = "1", "/d" = "4" }
spiffe_id = "spiffe://example.org/y"
audiences = ["x"]
"#,
    );
    let closest = |claims: Value| match jwt(&p, &attestation("github", claims)) {
        Err(Denial::NoMatch(miss)) => miss,
        other => panic!("{other:?}"),
    };
    let m = closest(json!({"a": "1", "b": "2", "c": "x"}));
    assert_eq!(
        (m.rule.as_str(), m.requirement.as_str()),
        ("three", "/c = \"3\"")
    );
    // One condition each: the tie goes to the earlier rule, with its first failure.
    let m = closest(json!({"a": "1"}));
    assert_eq!(
        (m.rule.as_str(), m.requirement.as_str()),
        ("three", "/b = \"2\"")
    );
    let m = closest(json!({"d": "4"}));
    assert_eq!(
        (m.rule.as_str(), m.requirement.as_str()),
        ("two", "/a = \"1\"")
    );
    assert_eq!(m.found, "the token has no /a");
}

#[test]
fn an_attestor_without_rules_is_said_so() {
    let err = jwt(
        &appendix(),
        &attestation("bootstrap", json!({"spiffe_id": "x"})),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"no rule matched: no rule uses attestor "bootstrap""#
    );
}

#[test]
fn list_conditions_accept_any_alternative() {
    let p = appendix();
    for ns in ["prod", "staging"] {
        let g = jwt(&p, &k8s(ns, "web")).unwrap();
        assert_eq!(g.rule, "k8s-workloads");
        assert_eq!(g.spiffe_id.path(), format!("/ns/{ns}/sa/web"));
    }
    assert_eq!(
        jwt(&p, &k8s("infra", "verifier")).unwrap().rule,
        "verifiers"
    );
    let err = jwt(&p, &k8s("dev", "web")).unwrap_err().to_string();
    assert_eq!(
        err,
        r#"no rule matched: closest rule "k8s-workloads" requires /kubernetes.io/namespace to be one of "prod", "staging" but the token has "dev""#
    );
}

#[test]
fn mtls_claims_match_and_explanations_speak_of_the_certificate() {
    let p = appendix();
    let att = attestation(
        "legacy-pki",
        json!({"subject": {"cn": "db1", "o": "acme-hosts"}, "san": {"uri": []}}),
    );
    let g = ask(
        &p,
        &att,
        Ask {
            x509: true,
            ..Ask::default()
        },
    )
    .unwrap();
    assert_eq!(g.spiffe_id, id("spiffe://example.org/host/db1"));
    assert_eq!(g.ttl, Duration::from_secs(600), "[x509] default_ttl");
    assert!(
        g.audiences.is_empty(),
        "an X.509-SVID gets no default audience"
    );
    let att = attestation("legacy-pki", json!({"subject": {"cn": "db1", "o": "evil"}}));
    let err = jwt(&p, &att).unwrap_err().to_string();
    assert!(err.ends_with(r#"but the certificate has "evil""#), "{err}");
}

#[test]
fn single_star_globs_stay_in_one_segment_and_double_star_crosses() {
    let p = policy(
        r#"
[[rule]]
name = "one-level"
attestor = "github"
owner = "o"
match = { "/repository" = "acme/*" }
spiffe_id = "spiffe://example.org/one/{/repository}"
audiences = ["x"]

[[rule]]
name = "any-depth"
attestor = "github"
owner = "o"
match = { "/repository" = "acme/**" }
spiffe_id = "spiffe://example.org/deep/{/repository}"
audiences = ["x"]
"#,
    );
    assert_eq!(jwt(&p, &github("acme/web", "r")).unwrap().rule, "one-level");
    let g = jwt(&p, &github("acme/team/web", "r")).unwrap();
    assert_eq!(g.rule, "any-depth");
    assert_eq!(g.spiffe_id.path(), "/deep/acme/team/web");
    assert!(jwt(&p, &github("other/web", "r")).is_err());
}

#[test]
fn array_claims_match_when_any_element_does() {
    let p = policy(
        r#"
[[rule]]
name = "by-san"
attestor = "legacy-pki"
owner = "o"
match = { "/san/uri" = "spiffe://legacy.example/hosts/*" }
spiffe_id = "spiffe://example.org/legacy/{/subject/cn}"
credentials = ["x509"]
"#,
    );
    let att = |uris: Value| {
        attestation(
            "legacy-pki",
            json!({"subject": {"cn": "h1"}, "san": {"uri": uris}}),
        )
    };
    let x509 = || Ask {
        x509: true,
        ..Ask::default()
    };
    assert!(
        ask(
            &p,
            &att(json!(["https://a", "spiffe://legacy.example/hosts/h1"])),
            x509()
        )
        .is_ok()
    );
    assert!(ask(&p, &att(json!(["https://a"])), x509()).is_err());
    assert!(ask(&p, &att(json!("spiffe://legacy.example/hosts/h1")), x509()).is_ok());
}

// --- identity templates ------------------------------------------------------------------

fn any_repo() -> Policy {
    policy(
        r#"
[[rule]]
name = "any-repo"
attestor = "github"
owner = "o"
spiffe_id = "spiffe://example.org/ci/{/repository}/{/ref}"
audiences = ["x"]
"#,
    )
}

#[test]
fn claim_values_that_escape_the_path_are_denied_with_the_reason() {
    let p = any_repo();
    let cases = [
        ("../x", "'.' or '..'"),
        ("acme/../x", "'.' or '..'"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("a%2Fb", "outside [A-Za-z0-9._-]"),
        ("a//b", "empty"),
        ("/x", "empty"),
        ("", "empty"),
        ("x?y", "query or fragment"),
        ("x#y", "query or fragment"),
        ("a b", "outside [A-Za-z0-9._-]"),
    ];
    for (repo, why) in cases {
        let err = jwt(&p, &github(repo, "main")).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Denial::InvalidIdentity { rule, .. } if rule == "any-repo"),
            "{repo:?}: {err:?}"
        );
        assert!(text.contains("/repository"), "{repo:?}: {text}");
        assert!(text.contains(why), "{repo:?}: {text}");
        assert_eq!(err.kind(), DenialKind::Refused);
    }
    // A trailing slash makes an empty segment before the next literal '/'.
    assert!(jwt(&p, &github("x/", "main")).is_err());
    // Slashes that make valid segments are fine.
    let g = jwt(&p, &github("acme/web", "main")).unwrap();
    assert_eq!(g.spiffe_id.path(), "/ci/acme/web/main");
}

#[test]
fn whole_id_templates_cannot_leave_the_trust_domain() {
    let p = policy(
        r#"
[[rule]]
name = "by-sub"
attestor = "github"
owner = "o"
spiffe_id = "{/sub}"
audiences = ["x"]
"#,
    );
    let ok = jwt(
        &p,
        &attestation("github", json!({"sub": "spiffe://example.org/w"})),
    )
    .unwrap();
    assert_eq!(ok.spiffe_id, id("spiffe://example.org/w"));
    let err = jwt(
        &p,
        &attestation("github", json!({"sub": "spiffe://evil.org/w"})),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("evil.org") && err.contains("example.org"),
        "{err}"
    );
    let err = jwt(&p, &attestation("github", json!({"sub": "repo:acme/web"})))
        .unwrap_err()
        .to_string();
    assert!(err.contains("spiffe://"), "{err}");
}

// --- audiences, scopes, TTLs, source addresses -------------------------------------------

#[test]
fn audiences_must_be_a_subset_and_default_to_the_first() {
    let p = appendix();
    let att = k8s("prod", "web");
    let g = jwt(&p, &att).unwrap();
    assert_eq!(g.audiences, vec!["payments"]);
    let g = ask(
        &p,
        &att,
        Ask {
            audiences: vec!["ledger", "payments", "ledger"],
            ..Ask::default()
        },
    )
    .unwrap();
    assert_eq!(g.audiences, vec!["ledger", "payments"]);
    let err = ask(
        &p,
        &att,
        Ask {
            audiences: vec!["payments", "admin"],
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), DenialKind::Audience);
    assert!(err.to_string().contains("\"admin\""), "{err}");
}

#[test]
fn a_rule_without_audiences_refuses_jwts_with_a_reason() {
    let p = policy(
        r#"
[[rule]]
name = "no-aud"
attestor = "github"
owner = "o"
spiffe_id = "spiffe://example.org/x"
credentials = ["jwt", "x509"]
"#,
    );
    let att = github("a", "b");
    let err = jwt(&p, &att).unwrap_err();
    assert_eq!(err.kind(), DenialKind::Audience);
    assert!(err.to_string().contains("no audiences"), "{err}");
    // An X.509-SVID has no audience, so the same rule can issue one.
    assert!(
        ask(
            &p,
            &att,
            Ask {
                x509: true,
                ..Ask::default()
            }
        )
        .is_ok()
    );
}

#[test]
fn scopes_must_be_a_subset_and_default_to_none() {
    let p = appendix();
    let att = github("acme/web", "refs/heads/main");
    assert!(jwt(&p, &att).unwrap().scopes.is_empty());
    let g = ask(
        &p,
        &att,
        Ask {
            scopes: vec!["deploy:prod", "deploy:prod"],
            ..Ask::default()
        },
    )
    .unwrap();
    assert_eq!(g.scopes, vec!["deploy:prod"]);
    let err = ask(
        &p,
        &att,
        Ask {
            scopes: vec!["deploy:staging", "admin"],
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), DenialKind::Scope);
    assert!(err.to_string().contains("\"admin\""), "{err}");
}

#[test]
fn ttls_default_clamp_and_refuse_zero() {
    let p = appendix();
    let att = github("acme/web", "refs/heads/main");
    let with_ttl = |secs: u64| {
        ask(
            &p,
            &att,
            Ask {
                ttl: Some(secs),
                ..Ask::default()
            },
        )
    };
    let g = with_ttl(600).unwrap();
    assert_eq!((g.ttl, g.clamped), (Duration::from_secs(600), false));
    let g = with_ttl(3600).unwrap();
    assert_eq!(
        (g.ttl, g.clamped),
        (Duration::from_secs(900), true),
        "rule max_ttl 15m"
    );
    assert_eq!(with_ttl(0).unwrap_err(), Denial::ZeroTtl);

    // Without rule TTLs the section's apply, per credential type.
    let k = k8s("prod", "web");
    let x509 = |ttl: Option<u64>| {
        ask(
            &p,
            &k,
            Ask {
                x509: true,
                ttl,
                ..Ask::default()
            },
        )
        .unwrap()
    };
    assert_eq!(x509(None).ttl, Duration::from_secs(600));
    let g = x509(Some(7200));
    assert_eq!((g.ttl, g.clamped), (Duration::from_secs(3600), true));
    assert_eq!(jwt(&p, &k).unwrap().ttl, Duration::from_secs(300));
}

#[test]
fn a_rule_default_ttl_is_used_and_kept_within_max() {
    let mut c = config(
        r#"
[[rule]]
name = "r"
attestor = "github"
owner = "o"
spiffe_id = "spiffe://example.org/x"
credentials = ["jwt", "x509"]
audiences = ["a"]
default_ttl = "2m"
"#,
    );
    let p = Policy::compile(&c).unwrap();
    assert_eq!(
        jwt(&p, &github("a", "b")).unwrap().ttl,
        Duration::from_secs(120)
    );
    // A section default above the rule's max is lowered to that max.
    c.rules[0].default_ttl = None;
    c.rules[0].max_ttl = Some(Dur(Duration::from_secs(240)));
    let p = Policy::compile(&c).unwrap();
    let g = ask(
        &p,
        &github("a", "b"),
        Ask {
            x509: true,
            ..Ask::default()
        },
    )
    .unwrap();
    assert_eq!((g.ttl, g.clamped), (Duration::from_secs(240), false));
}

#[test]
fn source_cidrs_must_contain_a_known_caller() {
    let p = policy(
        r#"
[[rule]]
name = "office"
attestor = "github"
owner = "o"
spiffe_id = "spiffe://example.org/x"
audiences = ["a"]
source_cidrs = ["10.0.0.0/8", "2001:db8::/32"]
"#,
    );
    let att = github("a", "b");
    let from = |caller: Option<&'static str>| {
        ask(
            &p,
            &att,
            Ask {
                caller,
                ..Ask::default()
            },
        )
    };
    assert!(from(Some("10.1.2.3")).is_ok());
    assert!(from(Some("2001:db8::1")).is_ok());
    let err = from(Some("192.168.1.1")).unwrap_err();
    assert!(
        err.to_string().contains("192.168.1.1") && err.to_string().contains("\"office\""),
        "{err}"
    );
    let err = from(None).unwrap_err();
    assert!(matches!(err, Denial::SourceAddress { caller: None, .. }));
    assert!(err.to_string().contains("not known"), "{err}");
}

// --- svid renewal and re-scoping ---------------------------------------------------------

const WEB: &str = "spiffe://example.org/ns/prod/sa/web";

#[test]
fn an_x509_svid_renews_under_its_granting_rule() {
    let p = appendix();
    let att = svid(WEB, "x509", "k8s-workloads", &[], &[]);
    let g = ask(
        &p,
        &att,
        Ask {
            x509: true,
            ..Ask::default()
        },
    )
    .unwrap();
    assert_eq!(g.rule, "k8s-workloads");
    assert_eq!(g.owner, "team-runtime");
    assert_eq!(g.spiffe_id, id(WEB));
    // Over mTLS an X.509-SVID gets anything its rule allows, not only what it had.
    let g = ask(
        &p,
        &att,
        Ask {
            audiences: vec!["ledger"],
            ..Ask::default()
        },
    )
    .unwrap();
    assert_eq!(g.audiences, vec!["ledger"]);
}

#[test]
fn renewal_follows_the_rule_as_configured_now() {
    let att = svid(WEB, "x509", "k8s-workloads", &[], &[]);
    let x509 = Ask {
        x509: true,
        ..Ask::default()
    };

    // Tightened: the rule no longer issues X.509-SVIDs.
    let tightened = APPENDIX_RULES.replacen(
        "credentials = [\"jwt\", \"x509\"]\naudiences = [\"payments\", \"ledger\"]",
        "credentials = [\"jwt\"]\naudiences = [\"payments\", \"ledger\"]",
        1,
    );
    assert_ne!(tightened, APPENDIX_RULES);
    let err = ask(&policy(&tightened), &att, x509).unwrap_err();
    assert!(
        matches!(&err, Denial::CredentialType { rule, .. } if rule == "k8s-workloads"),
        "{err:?}"
    );

    // Removed (renamed away).
    let removed = APPENDIX_RULES.replace("name = \"k8s-workloads\"", "name = \"k8s-v2\"");
    let err = ask(
        &policy(&removed),
        &att,
        Ask {
            x509: true,
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the rule that granted this credential no longer exists (\"k8s-workloads\")"
    );

    // Re-templated so that it can no longer produce this identity.
    let moved = APPENDIX_RULES.replace(
        "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/",
        "spiffe://example.org/k8s/{/kubernetes.io/namespace}/",
    );
    let err = ask(
        &policy(&moved),
        &att,
        Ask {
            x509: true,
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Denial::NotRenewable { .. }), "{err:?}");
    assert!(err.to_string().contains(WEB), "{err}");
}

#[test]
fn renewal_refuses_identities_outside_the_trust_domain_or_without_lineage() {
    let p = appendix();
    let att = svid(
        "spiffe://evil.org/ns/prod/sa/web",
        "x509",
        "k8s-workloads",
        &[],
        &[],
    );
    assert!(matches!(jwt(&p, &att), Err(Denial::BadSubject { .. })));
    let mut att = svid(WEB, "x509", "k8s-workloads", &[], &[]);
    att.parent = None;
    assert_eq!(jwt(&p, &att), Err(Denial::MissingLineage));
}

#[test]
fn a_bearer_jwt_can_only_be_narrowed() {
    let p = appendix();
    let att = svid(WEB, "jwt", "k8s-workloads", &["payments"], &[]);
    let g = jwt(&p, &att).unwrap();
    assert_eq!(g.audiences, vec!["payments"]);
    let err = ask(
        &p,
        &att,
        Ask {
            audiences: vec!["ledger"],
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), DenialKind::Audience);
    assert!(matches!(
        err,
        Denial::Audience {
            limit: Limit::Presented,
            ..
        }
    ));

    // The rule's first audience is not the token's: the token's first allowed one is used.
    let att = svid(WEB, "jwt", "k8s-workloads", &["other", "ledger"], &[]);
    assert_eq!(jwt(&p, &att).unwrap().audiences, vec!["ledger"]);

    // Scopes: the verifiers rule allows introspection, but this token never had it.
    let v = "spiffe://example.org/ns/infra/sa/verifier";
    let att = svid(v, "jwt", "verifiers", &["credbroker"], &[]);
    let err = ask(
        &p,
        &att,
        Ask {
            scopes: vec!["credbroker:introspect"],
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.kind(), DenialKind::Scope);
    assert!(err.to_string().contains("narrowed"), "{err}");
    let att = svid(
        v,
        "jwt",
        "verifiers",
        &["credbroker"],
        &["credbroker:introspect"],
    );
    let g = ask(
        &p,
        &att,
        Ask {
            scopes: vec!["credbroker:introspect"],
            ..Ask::default()
        },
    )
    .unwrap();
    assert_eq!(g.scopes, vec!["credbroker:introspect"]);
}

#[test]
fn a_rescoped_delegated_token_keeps_its_act_claim() {
    let p = appendix();
    let mut att = svid(
        ORCHESTRATOR,
        "jwt",
        "orchestrator-delegation",
        &["payments"],
        &[],
    );
    att.claims["act"] = json!({"sub": AGENT});
    let g = jwt(&p, &att).unwrap();
    assert_eq!(g.act, Some(json!({"sub": AGENT})));
    assert_eq!(g.spiffe_id, id(ORCHESTRATOR));
}

// --- delegation --------------------------------------------------------------------------

fn orchestrator_token(audiences: &[&str], scopes: &[&str]) -> Attestation {
    svid(ORCHESTRATOR, "jwt", "k8s-workloads", audiences, scopes)
}

#[test]
fn delegation_issues_for_the_subject_with_the_actor_in_act() {
    let p = appendix();
    let att = orchestrator_token(&["payments", "ledger"], &[]);
    let g = ask(
        &p,
        &att,
        Ask {
            actor: actor(AGENT, &[]),
            ..Ask::default()
        },
    )
    .unwrap();
    assert_eq!(g.rule, "orchestrator-delegation");
    assert_eq!(g.owner, "team-ai");
    assert_eq!(g.spiffe_id, id(ORCHESTRATOR));
    assert_eq!(g.audiences, vec!["payments"]);
    assert_eq!(g.act, Some(json!({"sub": AGENT})));
}

#[test]
fn delegation_to_an_unlisted_actor_is_refused_naming_the_rule() {
    let p = appendix();
    let att = orchestrator_token(&["payments"], &[]);
    let err = ask(
        &p,
        &att,
        Ask {
            actor: actor("spiffe://example.org/ns/prod/sa/intruder", &[]),
            ..Ask::default()
        },
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"orchestrator-delegation\"") && text.contains("intruder"),
        "{text}"
    );
    assert_eq!(err.kind(), DenialKind::Refused);
}

#[test]
fn delegation_for_a_subject_no_svid_rule_matches_explains_the_closest() {
    let p = appendix();
    let att = svid(WEB, "jwt", "k8s-workloads", &["payments"], &[]);
    let err = ask(
        &p,
        &att,
        Ask {
            actor: actor(AGENT, &[]),
            ..Ask::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "no rule matched: closest rule \"orchestrator-delegation\" requires /sub = \"{ORCHESTRATOR}\" but the token has \"{WEB}\""
        )
    );
    // A platform token is never the subject of a delegation.
    let err = ask(
        &p,
        &k8s("prod", "orchestrator"),
        Ask {
            actor: actor(AGENT, &[]),
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert_eq!(err, Denial::NotDelegable);
}

const DELEGATION_WITH_SCOPES: &str = r#"
[[rule]]
name = "orchestrator-delegation"
attestor = "svid"
owner = "team-ai"
match = { "/sub" = "spiffe://example.org/ns/prod/sa/orchestrator" }
spiffe_id = "{/sub}"
credentials = ["jwt"]
audiences = ["payments", "ledger"]
scopes = ["pay:read", "pay:write"]
delegate = ["spiffe://example.org/ns/prod/sa/agent"]
deny_in_chain = ["spiffe://example.org/ns/prod/sa/untrusted"]
"#;

#[test]
fn delegation_never_widens_the_subject_tokens_audiences_or_scopes() {
    let p = policy(DELEGATION_WITH_SCOPES);
    let att = orchestrator_token(&["payments"], &["pay:read"]);
    let delegated = |audiences: Vec<&'static str>, scopes: Vec<&'static str>| {
        ask(
            &p,
            &att,
            Ask {
                audiences,
                scopes,
                actor: actor(AGENT, &[]),
                ..Ask::default()
            },
        )
    };
    let g = delegated(vec![], vec!["pay:read"]).unwrap();
    assert_eq!(
        (g.audiences, g.scopes),
        (vec!["payments".to_string()], vec!["pay:read".to_string()])
    );
    // Allowed by the rule but not carried by the subject token.
    let err = delegated(vec![], vec!["pay:write"]).unwrap_err();
    assert_eq!(err.kind(), DenialKind::Scope);
    let err = delegated(vec!["ledger"], vec![]).unwrap_err();
    assert_eq!(err.kind(), DenialKind::Audience);
    // Carried by the subject token but not allowed by the rule.
    let att = orchestrator_token(&["payments", "admin"], &["pay:read", "root"]);
    let err = ask(
        &p,
        &att,
        Ask {
            scopes: vec!["root"],
            actor: actor(AGENT, &[]),
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        err,
        Denial::Scope {
            limit: Limit::Rule,
            ..
        }
    ));
}

#[test]
fn delegation_chains_nest_and_are_limited_to_four_actors() {
    let p = policy(DELEGATION_WITH_SCOPES);
    let att = orchestrator_token(&["payments"], &[]);
    let b = "spiffe://example.org/b";
    let c = "spiffe://example.org/c";
    let d = "spiffe://example.org/d";
    let e = "spiffe://example.org/e";
    let with_chain = |chain: &[&str]| {
        ask(
            &p,
            &att,
            Ask {
                actor: actor(AGENT, chain),
                ..Ask::default()
            },
        )
    };
    let g = with_chain(&[b]).unwrap();
    assert_eq!(g.act, Some(json!({"sub": AGENT, "act": {"sub": b}})));
    let g = with_chain(&[b, c, d]).unwrap();
    assert_eq!(
        g.act,
        Some(json!({"sub": AGENT, "act": {"sub": b, "act": {"sub": c, "act": {"sub": d}}}}))
    );
    let err = with_chain(&[b, c, d, e]).unwrap_err();
    assert_eq!(err, Denial::ChainTooDeep { depth: 5 });
    assert!(err.to_string().contains("at most 4"), "{err}");
}

#[test]
fn deny_in_chain_refuses_a_listed_identity_anywhere_in_the_chain() {
    let p = policy(DELEGATION_WITH_SCOPES);
    let untrusted = "spiffe://example.org/ns/prod/sa/untrusted";
    let att = orchestrator_token(&["payments"], &[]);
    let err = ask(
        &p,
        &att,
        Ask {
            actor: actor(AGENT, &["spiffe://example.org/x", untrusted]),
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        Denial::DeniedInChain {
            rule: "orchestrator-delegation".into(),
            identity: untrusted.into()
        }
    );
    // The subject token's own earlier actors count too.
    let mut att = orchestrator_token(&["payments"], &[]);
    att.claims["act"] = json!({"sub": untrusted});
    let err = ask(
        &p,
        &att,
        Ask {
            actor: actor(AGENT, &[]),
            ..Ask::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Denial::DeniedInChain { .. }), "{err:?}");
}

// --- explain -----------------------------------------------------------------------------

#[test]
fn explain_shows_the_match_and_the_identity() {
    let p = appendix();
    let e = p.explain(
        "github",
        &json!({"repository": "acme/web", "ref": "refs/heads/main"}),
    );
    assert!(e.is_match());
    let text = e.to_string();
    assert!(text.contains("rule \"deploy-from-main\" matches"), "{text}");
    assert!(
        text.contains("spiffe://example.org/ci/github/acme/web"),
        "{text}"
    );
    assert!(text.contains("deploy-api"), "{text}");
}

#[test]
fn explain_lists_each_rules_first_failed_condition_and_the_closest() {
    let p = appendix();
    let e = p.explain(
        "k8s",
        &json!({"kubernetes.io": {"namespace": "dev", "serviceaccount": {"name": "web"}}}),
    );
    assert!(!e.is_match());
    assert_eq!(e.misses.len(), 2);
    assert_eq!(e.closest().map(|m| m.rule.as_str()), Some("k8s-workloads"));
    let text = e.to_string();
    assert!(text.contains("closest rule \"k8s-workloads\""), "{text}");
    assert!(
        text.contains(r#"rule "verifiers" requires /kubernetes.io/namespace = "infra" but the token has "dev""#),
        "{text}"
    );

    let e = p.explain("bootstrap", &json!({}));
    assert_eq!(e.outcome, Outcome::NoRules);
    assert!(e.to_string().contains("no rule uses this attestor"));
}

#[test]
fn explain_reports_an_identity_that_cannot_be_rendered() {
    let p = any_repo();
    let e = p.explain("github", &json!({"repository": "../etc", "ref": "main"}));
    assert!(!e.is_match());
    let text = e.to_string();
    assert!(text.contains("refused") && text.contains("'..'"), "{text}");
}

// --- lint --------------------------------------------------------------------------------

fn messages(findings: &[Finding], severity: Severity) -> Vec<String> {
    findings
        .iter()
        .filter(|f| f.severity == severity)
        .map(|f| f.to_string())
        .collect()
}

#[test]
fn the_appendix_config_lints_without_errors() {
    let findings = lint(&config(APPENDIX_RULES));
    assert!(
        messages(&findings, Severity::Error).is_empty(),
        "{findings:?}"
    );
    // The join-token attestor has no rule in Appendix A.
    let warnings = messages(&findings, Severity::Warning);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("\"bootstrap\""), "{warnings:?}");
}

#[test]
fn lint_reports_errors_for_owners_attestors_templates_and_ttls() {
    let mut c = config(
        r#"
[[rule]]
name = "no-owner"
attestor = "github"
owner = "o"
spiffe_id = "spiffe://example.org/a"
audiences = ["a"]

[[rule]]
name = "ghost"
attestor = "github"
owner = "o"
match = { "/x" = "1" }
spiffe_id = "spiffe://example.org/b"
audiences = ["a"]

[[rule]]
name = "bad-template"
attestor = "github"
owner = "o"
match = { "/x" = "2" }
spiffe_id = "spiffe://example.org/ci/../{/repository}"
audiences = ["a"]

[[rule]]
name = "too-long"
attestor = "k8s"
owner = "o"
spiffe_id = "spiffe://example.org/c"
audiences = ["a"]
"#,
    );
    // Config refuses these itself; lint must report them when handed such a Config anyway.
    c.rules[0].owner = None;
    c.rules[1].attestor = crate::config::OneOrMany::One("gitlab".into());
    c.rules[3].max_ttl = Some(Dur(Duration::from_secs(7200)));
    let findings = lint(&c);
    let errors = messages(&findings, Severity::Error);
    let has = |rule: &str, needle: &str| {
        errors
            .iter()
            .any(|e| e.starts_with(&format!("error: rule \"{rule}\":")) && e.contains(needle))
    };
    assert!(has("no-owner", "owner"), "{errors:?}");
    assert!(has("ghost", "unknown attestor \"gitlab\""), "{errors:?}");
    assert!(has("bad-template", "spiffe_id"), "{errors:?}");
    assert!(has("too-long", "max_ttl"), "{errors:?}");
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(Policy::compile(&c).is_err());
}

#[test]
fn lint_warns_about_unreachable_rules_missing_audiences_and_misplaced_delegate() {
    let c = config(
        r#"
[[rule]]
name = "catch-all"
attestor = ["github", "k8s"]
owner = "o"
spiffe_id = "spiffe://example.org/ci/{/repository}"
audiences = ["a"]

[[rule]]
name = "shadowed"
attestor = "github"
owner = "o"
match = { "/ref" = "refs/heads/main" }
spiffe_id = "spiffe://example.org/main/{/repository}"
audiences = ["a"]
delegate = ["spiffe://example.org/agent"]

[[rule]]
name = "no-audiences"
attestor = "legacy-pki"
owner = "o"
match = { "/subject/o" = ["a", "b"] }
spiffe_id = "spiffe://example.org/host/{/subject/cn}"
credentials = ["jwt", "x509"]

[[rule]]
name = "narrower"
attestor = "legacy-pki"
owner = "o"
match = { "/subject/o" = "a", "/subject/cn" = "db*" }
spiffe_id = "spiffe://example.org/db/{/subject/cn}"
credentials = ["x509"]

[[rule]]
name = "different-claim"
attestor = "legacy-pki"
owner = "o"
match = { "/subject/o" = "c*" }
spiffe_id = "spiffe://example.org/c/{/subject/cn}"
credentials = ["x509"]
"#,
    );
    let findings = lint(&c);
    assert!(
        messages(&findings, Severity::Error).is_empty(),
        "{findings:?}"
    );
    let warnings = messages(&findings, Severity::Warning);
    let has = |rule: &str, needle: &str| {
        warnings
            .iter()
            .any(|w| w.starts_with(&format!("warning: rule \"{rule}\":")) && w.contains(needle))
    };
    assert!(has("shadowed", "unreachable"), "{warnings:?}");
    assert!(has("shadowed", "\"catch-all\""), "{warnings:?}");
    assert!(has("narrower", "unreachable"), "{warnings:?}");
    assert!(has("no-audiences", "no audiences"), "{warnings:?}");
    assert!(has("shadowed", "delegate"), "{warnings:?}");
    assert!(!has("different-claim", "unreachable"), "{warnings:?}");
    assert!(!has("no-audiences", "unreachable"), "{warnings:?}");
    assert!(!has("catch-all", "unreachable"), "{warnings:?}");
}

#[test]
fn findings_display_severity_and_rule() {
    let f = Finding {
        severity: Severity::Error,
        rule: Some("r".into()),
        message: "owner: missing".into(),
    };
    assert_eq!(f.to_string(), "error: rule \"r\": owner: missing");
}
