//! Delegation end to end (SPEC §6.3, RFC 8693 `actor_token`): real binary, real HTTPS.
//! Workloads get their own JWTs from platform tokens, then exchange a subject token plus
//! an actor token for a token with `act`.

mod support;

use serde_json::{Value, json};
use support::broker::{BrokerProcess, KeyDir, base_config, client, decode_segment, exchange_form};
use support::issuer::{ISSUER, TestIssuer};

const TD: &str = "spiffe://example.org/ns/prod/sa/";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

fn id(name: &str) -> String {
    format!("{TD}{name}")
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

[[rule]]
name = "workloads"
attestor = "ci"
owner = "team-runtime"
match = {{ "/sa" = "*" }}
spiffe_id = "{TD}{{/sa}}"
credentials = ["jwt", "x509"]
audiences = ["payments", "ledger", "credbroker"]
scopes = ["pay:read", "pay:write", "credbroker:introspect"]

[[rule]]
name = "orchestrator-delegation"
attestor = "svid"
owner = "team-ai"
match = {{ "/sub" = "{TD}orchestrator" }}
spiffe_id = "{{/sub}}"
audiences = ["payments", "ledger"]
scopes = ["pay:read", "pay:write"]
delegate = ["{TD}agent"]
deny_in_chain = ["{TD}untrusted"]

[[rule]]
name = "agent-delegation"
attestor = "svid"
owner = "team-ai"
match = {{ "/sub" = "{TD}agent" }}
spiffe_id = "{{/sub}}"
audiences = ["payments"]
scopes = ["pay:read"]
delegate = ["{TD}subagent", "{TD}untrusted"]

[[rule]]
name = "relay-delegation"
attestor = "svid"
owner = "team-ai"
match = {{ "/sub" = "{TD}w*" }}
spiffe_id = "{{/sub}}"
audiences = ["payments"]
delegate = ["{TD}w0", "{TD}w1", "{TD}w2", "{TD}w3", "{TD}w4", "{TD}w5"]
"#
    )
}

struct Fixture {
    keys: KeyDir,
    issuer: TestIssuer,
    broker: BrokerProcess,
    http: reqwest::Client,
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
    async fn post(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(self.broker.url("/v1/token"))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A workload's own JWT, from a platform token naming service account `sa`.
    async fn workload_token(&self, sa: &str, audience: &str, scope: &str) -> String {
        let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
        claims.insert("sa".into(), json!(sa));
        let platform = self.issuer.sign_rs256(&claims);
        let mut extra = vec![("audience", audience)];
        if !scope.is_empty() {
            extra.push(("scope", scope));
        }
        let (status, body) = self.post(&exchange_form(&platform, &extra)).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// Exchange `subject` with `actor` acting; returns status and body.
    async fn delegate(&self, subject: &str, actor: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let mut form = exchange_form(
            subject,
            &[("actor_token", actor), ("actor_token_type", JWT_TYPE)],
        );
        form.extend_from_slice(extra);
        self.post(&form).await
    }

    async fn delegated(&self, subject: &str, actor: &str, extra: &[(&str, &str)]) -> String {
        let (status, body) = self.delegate(subject, actor, extra).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn expect_error(
        &self,
        subject: &str,
        actor: &str,
        extra: &[(&str, &str)],
        code: &str,
    ) -> String {
        let (status, body) = self.delegate(subject, actor, extra).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], code, "{body}");
        let text = body.to_string();
        assert!(
            !text.contains(subject) && !text.contains(actor),
            "a token leaked: {text}"
        );
        body["error_description"].as_str().unwrap().to_string()
    }

    async fn introspect_active(&self, token: &str) -> bool {
        let resp = self
            .http
            .post(self.broker.url("/v1/introspect"))
            .bearer_auth(self.keys.admin_token())
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["active"] == json!(true)
    }

    async fn revoke(&self, body: Value) {
        let resp = self
            .http
            .post(self.broker.url("/v1/revoke"))
            .bearer_auth(self.keys.admin_token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }
}

fn claims(token: &str) -> Value {
    decode_segment(token, 1)
}

#[tokio::test]
async fn delegated_token_names_the_subject_and_the_actor_and_descends_from_both() {
    let f = start();
    let orchestrator = f
        .workload_token("orchestrator", "payments", "pay:read")
        .await;
    let agent = f.workload_token("agent", "credbroker", "").await;
    let token = f.delegated(&orchestrator, &agent, &[]).await;
    let c = claims(&token);
    assert_eq!(c["sub"], id("orchestrator"));
    assert_eq!(c["act"], json!({"sub": id("agent")}));
    assert_eq!(c["rule"], "orchestrator-delegation");
    assert_eq!(c["owner"], "team-ai");
    assert_eq!(c["aud"], "payments");
    assert!(c.get("scope").is_none(), "no scope asked, none given: {c}");
    let chain = c["chain"].as_array().unwrap();
    assert!(chain.contains(&claims(&orchestrator)["jti"]), "{c}");
    assert!(chain.contains(&claims(&agent)["jti"]), "{c}");
    // Never outlives its subject token.
    assert!(c["exp"].as_i64() <= claims(&orchestrator)["exp"].as_i64());
    assert!(f.introspect_active(&token).await);

    // Scopes within both the subject token's and the rule's.
    let token = f
        .delegated(&orchestrator, &agent, &[("scope", "pay:read")])
        .await;
    assert_eq!(claims(&token)["scope"], "pay:read");
}

#[tokio::test]
async fn a_two_step_chain_nests_act() {
    let f = start();
    let agent = f.workload_token("agent", "payments", "pay:read").await;
    let subagent = f.workload_token("subagent", "credbroker", "").await;
    // The sub-agent acts for the agent …
    let agent_via_subagent = f.delegated(&agent, &subagent, &[]).await;
    assert_eq!(
        claims(&agent_via_subagent)["act"],
        json!({"sub": id("subagent")})
    );
    // … and that token makes the agent act for the orchestrator.
    let orchestrator = f.workload_token("orchestrator", "payments", "").await;
    let token = f.delegated(&orchestrator, &agent_via_subagent, &[]).await;
    let c = claims(&token);
    assert_eq!(c["sub"], id("orchestrator"));
    assert_eq!(
        c["act"],
        json!({"sub": id("agent"), "act": {"sub": id("subagent")}})
    );
    // Its chain names the orchestrator's token, the agent's token and the sub-agent's.
    let chain = c["chain"].as_array().unwrap();
    for parent in [&orchestrator, &agent, &subagent, &agent_via_subagent] {
        assert!(chain.contains(&claims(parent)["jti"]), "{c}");
    }

    // Revoking the sub-agent's own credential kills everything descending from it.
    f.revoke(json!({"credential_id": claims(&subagent)["jti"]}))
        .await;
    assert!(!f.introspect_active(&agent_via_subagent).await);
    assert!(!f.introspect_active(&token).await);
    assert!(f.introspect_active(&orchestrator).await);
}

#[tokio::test]
async fn an_actor_the_rule_does_not_list_is_refused_naming_the_rule() {
    let f = start();
    let orchestrator = f.workload_token("orchestrator", "payments", "").await;
    let intruder = f.workload_token("intruder", "credbroker", "").await;
    let why = f
        .expect_error(&orchestrator, &intruder, &[], "invalid_request")
        .await;
    assert!(
        why.contains("orchestrator-delegation") && why.contains("intruder"),
        "{why}"
    );

    // No svid rule matches the subject at all.
    let billing = f.workload_token("billing", "payments", "").await;
    let agent = f.workload_token("agent", "credbroker", "").await;
    f.expect_error(&billing, &agent, &[], "invalid_request")
        .await;

    // A platform token is never a delegation subject, nor an actor credential.
    let mut platform_claims = TestIssuer::claims("acme/web", "refs/heads/main");
    platform_claims.insert("sa".into(), json!("orchestrator"));
    let platform = f.issuer.sign_rs256(&platform_claims);
    f.expect_error(&platform, &agent, &[], "invalid_request")
        .await;
    let why = f
        .expect_error(&orchestrator, &platform, &[], "invalid_request")
        .await;
    assert!(why.contains("actor_token"), "{why}");
}

#[tokio::test]
async fn delegation_never_widens_audiences_or_scopes() {
    let f = start();
    let orchestrator = f
        .workload_token("orchestrator", "payments", "pay:read")
        .await;
    let agent = f.workload_token("agent", "credbroker", "").await;
    // In the rule but not in the subject token.
    f.expect_error(
        &orchestrator,
        &agent,
        &[("scope", "pay:write")],
        "invalid_scope",
    )
    .await;
    f.expect_error(
        &orchestrator,
        &agent,
        &[("audience", "ledger")],
        "invalid_target",
    )
    .await;
    // In the subject token's rule but not in the delegation rule.
    f.expect_error(
        &orchestrator,
        &agent,
        &[("scope", "credbroker:introspect")],
        "invalid_scope",
    )
    .await;
    f.expect_error(
        &orchestrator,
        &agent,
        &[("audience", "credbroker")],
        "invalid_target",
    )
    .await;
    // A delegated token re-scoped later stays within itself and keeps `act`.
    let token = f
        .delegated(&orchestrator, &agent, &[("scope", "pay:read")])
        .await;
    let (status, body) = f
        .post(&exchange_form(&token, &[("scope", "pay:write")]))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    let (status, body) = f.post(&exchange_form(&token, &[])).await;
    assert_eq!(status, 200, "{body}");
    let rescoped = body["access_token"].as_str().unwrap();
    assert_eq!(claims(rescoped)["act"], json!({"sub": id("agent")}));
}

#[tokio::test]
async fn act_chains_are_limited_to_four_actors() {
    let f = start();
    // w4 acts for w3, that token for w2, … each step nests one more actor.
    let mut actor = f.workload_token("w5", "credbroker", "").await;
    for (step, subject) in ["w4", "w3", "w2", "w1"].iter().enumerate() {
        let subject_token = f.workload_token(subject, "payments", "").await;
        actor = f.delegated(&subject_token, &actor, &[]).await;
        let depth = claims(&actor).to_string().matches("\"sub\":").count() - 1;
        assert_eq!(depth, step + 1, "{}", claims(&actor));
    }
    // w1's token names 4 actors; one more would be 5.
    let w0 = f.workload_token("w0", "payments", "").await;
    let why = f.expect_error(&w0, &actor, &[], "invalid_request").await;
    assert!(why.contains("at most 4"), "{why}");
}

#[tokio::test]
async fn a_rule_refuses_chains_containing_a_denied_identity() {
    let f = start();
    let agent = f.workload_token("agent", "payments", "").await;
    let untrusted = f.workload_token("untrusted", "credbroker", "").await;
    // The agent's own rule lets `untrusted` act for it …
    let agent_via_untrusted = f.delegated(&agent, &untrusted, &[]).await;
    // … but the orchestrator's rule refuses any chain that contains it.
    let orchestrator = f.workload_token("orchestrator", "payments", "").await;
    let why = f
        .expect_error(&orchestrator, &agent_via_untrusted, &[], "invalid_request")
        .await;
    assert!(why.contains("untrusted"), "{why}");
}

#[tokio::test]
async fn revoking_either_parent_kills_the_delegated_token() {
    let f = start();
    let orchestrator = f.workload_token("orchestrator", "payments", "").await;
    let agent = f.workload_token("agent", "credbroker", "").await;
    let by_subject = f.delegated(&orchestrator, &agent, &[]).await;
    let other_orchestrator = f.workload_token("orchestrator", "payments", "").await;
    let by_actor = f.delegated(&other_orchestrator, &agent, &[]).await;
    assert!(f.introspect_active(&by_subject).await);
    assert!(f.introspect_active(&by_actor).await);

    // The subject's credential: only tokens from that subject token die.
    f.revoke(json!({"credential_id": claims(&orchestrator)["jti"]}))
        .await;
    assert!(!f.introspect_active(&by_subject).await);
    assert!(f.introspect_active(&by_actor).await);
    // A revoked parent can no longer be used for a new delegation either.
    f.expect_error(&orchestrator, &agent, &[], "invalid_request")
        .await;

    // The actor's credential.
    f.revoke(json!({"credential_id": claims(&agent)["jti"]}))
        .await;
    assert!(!f.introspect_active(&by_actor).await);
    assert!(f.introspect_active(&other_orchestrator).await);

    // Revoking the actor's identity reaches tokens it acts in through `act`.
    let agent2 = f.workload_token("agent", "credbroker", "").await;
    let third = f.delegated(&other_orchestrator, &agent2, &[]).await;
    assert!(f.introspect_active(&third).await);
    f.revoke(json!({"spiffe_id": id("agent")})).await;
    assert!(!f.introspect_active(&third).await);
    assert!(f.introspect_active(&other_orchestrator).await);
}

#[tokio::test]
async fn actor_token_and_its_type_go_together() {
    let f = start();
    let orchestrator = f.workload_token("orchestrator", "payments", "").await;
    let agent = f.workload_token("agent", "credbroker", "").await;
    for extra in [
        vec![("actor_token", agent.as_str())],
        vec![("actor_token_type", JWT_TYPE)],
        vec![
            ("actor_token", agent.as_str()),
            ("actor_token_type", "urn:x:unknown"),
        ],
        vec![("actor_token", ""), ("actor_token_type", JWT_TYPE)],
    ] {
        let (status, body) = f.post(&exchange_form(&orchestrator, &extra)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        assert!(!body.to_string().contains(&agent));
    }
}

#[tokio::test]
async fn an_actor_can_present_its_x509_svid_over_mtls() {
    let f = start();
    // The agent gets an X.509-SVID with its platform token; its key never leaves it.
    let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
    claims.insert("sa".into(), json!("agent"));
    let platform = f.issuer.sign_rs256(&claims);
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let resp = f
        .http
        .post(f.broker.url("/v1/svid"))
        .bearer_auth(&platform)
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let svid: Value = resp.json().await.unwrap();
    assert_eq!(svid["spiffe_id"], id("agent"));
    let cert_path = f.keys.path("agent-svid.pem");
    let key_path = f.keys.path("agent-svid.key");
    std::fs::write(&cert_path, svid["svid_chain"].as_str().unwrap()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let leaf_pem = svid["svid_chain"].as_str().unwrap();
    let leaf = rustls::pki_types::pem::PemObject::from_pem_slice(leaf_pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    let thumbprint = credbroker::tls::thumbprint(&leaf);

    let subject = f
        .workload_token("orchestrator", "payments", "pay:read")
        .await;
    let mtls = client(&f.keys, Some((&cert_path, &key_path)));
    let form = exchange_form(
        &subject,
        &[
            ("actor_token", thumbprint.as_str()),
            ("actor_token_type", "urn:credbroker:token-type:x509-svid"),
        ],
    );
    let resp = mtls
        .post(f.broker.url("/v1/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let delegated = decode_segment(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(delegated["sub"], id("orchestrator"));
    assert_eq!(delegated["act"], json!({ "sub": id("agent") }));

    // The thumbprint must name the certificate presented on this connection.
    let form = exchange_form(
        &subject,
        &[
            ("actor_token", "bm90LXRoZS1wcmVzZW50ZWQtY2VydGlmaWNhdGU"),
            ("actor_token_type", "urn:credbroker:token-type:x509-svid"),
        ],
    );
    let resp = mtls
        .post(f.broker.url("/v1/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // And without a client certificate there is no X.509 actor at all.
    let (status, body) = f
        .post(&exchange_form(
            &subject,
            &[
                ("actor_token", thumbprint.as_str()),
                ("actor_token_type", "urn:credbroker:token-type:x509-svid"),
            ],
        ))
        .await;
    assert_eq!(status, 400, "{body}");
}
