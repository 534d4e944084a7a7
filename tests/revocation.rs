//! The instant kill, end to end through HTTP with a real Redis (SPEC §6.4, §6.5, §7, §8).

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::broker::{BrokerProcess, KeyDir, base_config, client, exchange_form};
use support::issuer::{ISSUER, TestIssuer};
use support::redis::RedisServer;

const JOIN_TOKEN_TYPE: &str = "urn:credbroker:token-type:join-token";

fn rules() -> String {
    format!(
        r#"
[[attestor]]
name = "ci"
kind = "jwt"
issuer = "{ISSUER}"
jwks_file = "ci-jwks.json"
audiences = ["credbroker"]

[[attestor]]
name = "bootstrap"
kind = "join_token"

[[rule]]
name = "ci-jobs"
attestor = "ci"
owner = "team-platform"
match = {{ "/repository" = "acme/*" }}
spiffe_id = "spiffe://example.org/ci/{{/repository}}"
audiences = ["deploy-api", "inventory", "credbroker"]
scopes = ["deploy", "read", "credbroker:introspect"]

[[rule]]
name = "hosts"
attestor = "bootstrap"
owner = "team-infra"
spiffe_id = "{{/spiffe_id}}"
audiences = ["inventory"]
"#
    )
}

struct Stack {
    keys: KeyDir,
    issuer: TestIssuer,
    redis: RedisServer,
    http: reqwest::Client,
    admin: String,
}

impl Stack {
    fn new() -> Stack {
        let keys = KeyDir::generate();
        let issuer = TestIssuer::new();
        issuer.write_jwks(&keys.path("ci-jwks.json"));
        let redis = RedisServer::start();
        let http = client(&keys, None);
        let admin = keys.admin_token();
        Stack {
            keys,
            issuer,
            redis,
            http,
            admin,
        }
    }

    fn config(&self, extra: &str) -> String {
        let store = format!(
            "store = \"redis\"\nredis_url = \"{}\"\nmax_staleness = \"1s\"\n{extra}",
            self.redis.url
        );
        base_config(&self.keys, &store) + &rules()
    }

    fn broker(&self) -> BrokerProcess {
        self.broker_with("")
    }

    fn broker_with(&self, extra: &str) -> BrokerProcess {
        let path = self.keys.path(&format!("broker-{}.toml", unique()));
        std::fs::write(&path, self.config(extra)).unwrap();
        BrokerProcess::start_with(&path)
    }

    fn platform_token(&self, repo: &str) -> String {
        self.issuer
            .sign_rs256(&TestIssuer::claims(repo, "refs/heads/main"))
    }

    async fn exchange(
        &self,
        b: &BrokerProcess,
        token: &str,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let r = self
            .http
            .post(b.url("/v1/token"))
            .form(&exchange_form(token, extra))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn issue(&self, b: &BrokerProcess, repo: &str) -> String {
        let (status, body) = self.exchange(b, &self.platform_token(repo), &[]).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn admin_post(&self, b: &BrokerProcess, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(b.url(path))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn active(&self, b: &BrokerProcess, token: &str) -> bool {
        let r = self
            .http
            .post(b.url("/v1/introspect"))
            .bearer_auth(&self.admin)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        body["active"].as_bool().unwrap()
    }

    /// Polls until the token's introspection says `want`, for at most 10 s.
    async fn wait_active(&self, b: &BrokerProcess, token: &str, want: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.active(b, token).await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

fn unique() -> String {
    let mut b = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    hex::encode(b)
}

fn claims(token: &str) -> Value {
    support::broker::decode_segment(token, 1)
}

#[tokio::test]
async fn each_revocation_kind_kills_what_it_covers_and_nothing_else() {
    let s = Stack::new();
    let b = s.broker();

    // One credential, by jti.
    let t1 = s.issue(&b, "acme/one").await;
    let bystander = s.issue(&b, "acme/bystander").await;
    let (status, body) = s
        .admin_post(
            &b,
            "/v1/revoke",
            json!({"credential_id": claims(&t1)["jti"], "reason": "leaked"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["kind"], "credential");
    assert_eq!(body["revoked"]["reason"], "leaked");
    assert!(body["revoked"]["expires_at"].as_str().is_some());
    assert!(!s.active(&b, &t1).await);
    assert!(s.active(&b, &bystander).await);

    // Everything issued to one SPIFFE ID.
    let t2 = s.issue(&b, "acme/two").await;
    let (status, body) = s
        .admin_post(
            &b,
            "/v1/revoke",
            json!({"spiffe_id": "spiffe://example.org/ci/acme/two"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["kind"], "spiffe_id");
    assert!(body["revoked"]["issued_before"].as_str().is_some());
    assert!(!s.active(&b, &t2).await);
    assert!(s.active(&b, &bystander).await);

    // Everything obtained with one attestation source (a platform-token subject).
    let t3 = s.issue(&b, "acme/three").await;
    let (status, body) = s
        .admin_post(
            &b,
            "/v1/revoke",
            json!({"source": {"attestor": "ci", "subject": "repo:acme/three:ref:refs/heads/main"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["kind"], "source");
    assert_eq!(body["revoked"]["value"], claims(&t3)["src"]);
    assert!(!s.active(&b, &t3).await);
    assert!(s.active(&b, &bystander).await);

    // RFC 7009 form.
    let t4 = s.issue(&b, "acme/four").await;
    let r = s
        .http
        .post(b.url("/v1/revoke"))
        .bearer_auth(&s.admin)
        .form(&[("token", t4.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!s.active(&b, &t4).await);

    // A global cut-off kills everything issued before it.
    let cutoff = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let cutoff = cutoff
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, body) = s
        .admin_post(&b, "/v1/revoke", json!({"all_issued_before": cutoff}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["kind"], "all");
    assert_eq!(body["revoked"]["value"], "");
    assert!(!s.active(&b, &bystander).await);
}

#[tokio::test]
async fn revoke_body_must_be_exactly_one_form() {
    let s = Stack::new();
    let b = s.broker();
    for body in [
        json!({}),
        json!({"credential_id": "abc", "spiffe_id": "spiffe://example.org/x"}),
        json!({"spiffe_id": "spiffe://evil.org/x"}),
        json!({"spiffe_id": "spiffe://example.org/x", "issued_before": "yesterday"}),
        json!({"credential_id": "abc", "surprise": true}),
    ] {
        let (status, reply) = s.admin_post(&b, "/v1/revoke", body.clone()).await;
        assert_eq!(status, 400, "{body} → {reply}");
        assert_eq!(reply["error"], "invalid_request", "{reply}");
    }
    let r = s
        .http
        .post(b.url("/v1/revoke"))
        .bearer_auth(&s.admin)
        .form(&[("token", "not-one-of-ours")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn revoking_a_credential_kills_its_descendants_but_not_its_ancestors() {
    let s = Stack::new();
    let b = s.broker();
    let root = s.issue(&b, "acme/lineage").await;
    let (status, body) = s.exchange(&b, &root, &[("audience", "deploy-api")]).await;
    assert_eq!(status, 200, "{body}");
    let child = body["access_token"].as_str().unwrap().to_string();
    let (status, body) = s.exchange(&b, &child, &[]).await;
    assert_eq!(status, 200, "{body}");
    let grandchild = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims(&child)["chain"], json!([claims(&root)["jti"]]));
    assert_eq!(
        claims(&grandchild)["chain"],
        json!([claims(&root)["jti"], claims(&child)["jti"]])
    );
    assert_eq!(
        claims(&grandchild)["src"],
        claims(&root)["src"],
        "renewals keep their line's source"
    );

    s.admin_post(
        &b,
        "/v1/revoke",
        json!({"credential_id": claims(&child)["jti"]}),
    )
    .await;
    assert!(s.active(&b, &root).await, "an ancestor is untouched");
    assert!(!s.active(&b, &child).await);
    assert!(
        !s.active(&b, &grandchild).await,
        "a descendant dies with its parent"
    );

    // A revoked credential cannot be exchanged again.
    let (status, body) = s.exchange(&b, &child, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
}

#[tokio::test]
async fn a_bearer_token_is_never_widened() {
    let s = Stack::new();
    let b = s.broker();
    let (status, body) = s
        .exchange(
            &b,
            &s.platform_token("acme/narrow"),
            &[("audience", "inventory"), ("scope", "read")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let narrow = body["access_token"].as_str().unwrap().to_string();
    let (status, body) = s.exchange(&b, &narrow, &[("audience", "deploy-api")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    let (status, body) = s.exchange(&b, &narrow, &[("scope", "deploy")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    let (status, body) = s.exchange(&b, &narrow, &[("ttl", "3600")]).await;
    assert_eq!(status, 200, "{body}");
    let renewed = body["access_token"].as_str().unwrap();
    assert!(
        claims(renewed)["exp"].as_i64().unwrap() <= claims(&narrow)["exp"].as_i64().unwrap(),
        "a re-scoped bearer token never outlives its parent"
    );
}

#[tokio::test]
async fn a_locked_identity_gets_nothing_until_unlocked() {
    let s = Stack::new();
    let b = s.broker();
    let held = s.issue(&b, "acme/locked").await;
    let id = "spiffe://example.org/ci/acme/locked";
    let (status, body) = s
        .admin_post(
            &b,
            "/v1/lock",
            json!({"spiffe_id": id, "reason": "incident 42"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["locked"]["kind"], "lock");
    assert!(
        !s.active(&b, &held).await,
        "a lock revokes what the identity holds"
    );

    let (status, body) = s.exchange(&b, &s.platform_token("acme/locked"), &[]).await;
    assert_eq!(status, 400, "{body}");
    let d = body["error_description"].as_str().unwrap();
    assert!(d.contains("locked") && d.contains("incident 42"), "{d}");

    let locks: Value = s
        .http
        .get(b.url("/v1/locks"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(locks["locks"][0]["value"], id);

    let r = s
        .http
        .delete(b.url("/v1/lock"))
        .query(&[("spiffe_id", id)])
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = s.exchange(&b, &s.platform_token("acme/locked"), &[]).await;
    assert_eq!(status, 200, "issuance resumes after unlock: {body}");

    // Unlocking what is not locked says so.
    let r = s
        .http
        .delete(b.url("/v1/lock"))
        .query(&[("spiffe_id", id)])
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_join_token_works_exactly_once_under_twenty_concurrent_redemptions() {
    let s = Stack::new();
    let b = s.broker();
    let (status, body) = s
        .admin_post(
            &b,
            "/v1/join-tokens",
            json!({"spiffe_id": "spiffe://example.org/host/db-1", "ttl": 600}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["spiffe_id"], "spiffe://example.org/host/db-1");
    assert!(body["expires_at"].as_str().is_some());
    let token = body["token"].as_str().unwrap().to_string();

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = s.http.clone();
        let url = b.url("/v1/token");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .form(&[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token_type", JOIN_TOKEN_TYPE),
                    ("subject_token", token.as_str()),
                ])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        if status == 200 {
            winners.push(body);
        } else {
            assert_eq!(status, 400, "{body}");
            assert!(
                !body.to_string().contains(&token),
                "the join token leaked: {body}"
            );
        }
    }
    assert_eq!(winners.len(), 1, "exactly one redemption succeeds");
    let issued = claims(winners[0]["access_token"].as_str().unwrap());
    assert_eq!(issued["sub"], "spiffe://example.org/host/db-1");
    assert_eq!(issued["att"]["kind"], "join_token");
}

#[tokio::test]
async fn admin_endpoints_refuse_missing_wrong_and_workload_credentials() {
    let s = Stack::new();
    let b = s.broker();
    let workload = s.issue(&b, "acme/not-admin").await;
    let mut forged = workload.clone();
    forged.pop();
    forged.push(if workload.ends_with('A') { 'B' } else { 'A' });
    let endpoints: [(&str, &str, Value); 5] = [
        ("POST", "/v1/revoke", json!({"credential_id": "abc"})),
        (
            "POST",
            "/v1/lock",
            json!({"spiffe_id": "spiffe://example.org/x"}),
        ),
        ("GET", "/v1/locks", Value::Null),
        (
            "POST",
            "/v1/join-tokens",
            json!({"spiffe_id": "spiffe://example.org/x"}),
        ),
        ("GET", "/v1/identities", Value::Null),
    ];
    for (method, path, body) in endpoints {
        for (credential, status) in [
            (None, 401),
            (Some("wrong-admin-token"), 401),
            (Some(forged.as_str()), 401),
            (Some(workload.as_str()), 403),
        ] {
            let mut req = match method {
                "POST" => s.http.post(b.url(path)).json(&body),
                _ => s.http.get(b.url(path)),
            };
            if let Some(c) = credential {
                req = req.bearer_auth(c);
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                r.status().as_u16(),
                status,
                "{method} {path} with {:?}",
                credential.map(|c| &c[..8.min(c.len())])
            );
            if status == 401 {
                assert!(r.headers().contains_key("www-authenticate"), "{path}");
            }
            let reply: Value = r.json().await.unwrap();
            assert!(reply["error"].is_string(), "{reply}");
            let text = reply.to_string();
            assert!(
                !text.contains(&workload) && !text.contains("wrong-admin-token"),
                "{text}"
            );
        }
    }
}

#[tokio::test]
async fn introspection_needs_a_credential_with_the_right() {
    let s = Stack::new();
    let b = s.broker();
    let token = s.issue(&b, "acme/introspected").await;
    let r = s
        .http
        .post(b.url("/v1/introspect"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let plain = s.issue(&b, "acme/plain").await;
    let r = s
        .http
        .post(b.url("/v1/introspect"))
        .bearer_auth(&plain)
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (status, body) = s
        .exchange(
            &b,
            &s.platform_token("acme/verifier"),
            &[
                ("audience", "credbroker"),
                ("scope", "credbroker:introspect"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let verifier = body["access_token"].as_str().unwrap();
    let r = s
        .http
        .post(b.url("/v1/introspect"))
        .bearer_auth(verifier)
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["active"], true);
    assert_eq!(answer["sub"], "spiffe://example.org/ci/acme/introspected");
    // Garbage and foreign tokens are simply inactive.
    for junk in ["junk", "a.b.c", &s.platform_token("acme/x")] {
        let r = s
            .http
            .post(b.url("/v1/introspect"))
            .bearer_auth(verifier)
            .form(&[("token", junk)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"active": false}));
    }
}

#[tokio::test]
async fn revocations_survive_a_broker_restart() {
    let s = Stack::new();
    let mut b = s.broker();
    let token = s.issue(&b, "acme/restart").await;
    s.admin_post(
        &b,
        "/v1/revoke",
        json!({"credential_id": claims(&token)["jti"]}),
    )
    .await;
    b.kill();
    let b2 = s.broker();
    assert!(
        !s.active(&b2, &token).await,
        "the new broker loaded the revocation from Redis"
    );
}

#[tokio::test]
async fn three_brokers_on_one_redis_behave_as_one() {
    let s = Stack::new();
    let brokers = [s.broker(), s.broker(), s.broker()];
    let token = s.issue(&brokers[0], "acme/fleet").await;
    for b in &brokers {
        assert!(s.active(b, &token).await);
    }
    let started = Instant::now();
    let (status, _) = s
        .admin_post(
            &brokers[1],
            "/v1/revoke",
            json!({"credential_id": claims(&token)["jti"]}),
        )
        .await;
    assert_eq!(status, 200);
    for b in &brokers {
        assert!(
            s.wait_active(b, &token, false).await,
            "every broker enforces the revocation"
        );
    }
    println!(
        "revocation reached 3 brokers in {:?} (informational)",
        started.elapsed()
    );

    // Inventory and join tokens are shared too: a token created on one broker is redeemed on another.
    let (_, body) = s
        .admin_post(
            &brokers[0],
            "/v1/join-tokens",
            json!({"spiffe_id": "spiffe://example.org/host/web-7"}),
        )
        .await;
    let join = body["token"].as_str().unwrap();
    let r = s
        .http
        .post(brokers[2].url("/v1/token"))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token_type", JOIN_TOKEN_TYPE),
            ("subject_token", join),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = s
        .http
        .get(brokers[1].url("/v1/identities"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["spiffe_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"spiffe://example.org/ci/acme/fleet"),
        "{list}"
    );
    assert!(ids.contains(&"spiffe://example.org/host/web-7"), "{list}");
    let fleet = list["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["spiffe_id"] == "spiffe://example.org/ci/acme/fleet")
        .unwrap();
    assert_eq!(fleet["owner"], "team-platform");
    assert_eq!(fleet["rule"], "ci-jobs");
    assert_eq!(fleet["credentials_issued"], 1);
}

#[tokio::test]
async fn redis_outage_fails_closed_then_recovers_with_revocations_intact() {
    let mut s = Stack::new();
    let b = s.broker();
    let revoked = s.issue(&b, "acme/outage").await;
    s.admin_post(
        &b,
        "/v1/revoke",
        json!({"credential_id": claims(&revoked)["jti"]}),
    )
    .await;

    s.redis.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut status = 0;
    while Instant::now() < deadline {
        status = s
            .exchange(&b, &s.platform_token("acme/outage"), &[])
            .await
            .0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 503,
        "issuance fails closed once the mirror is stale"
    );
    let (_, body) = s.exchange(&b, &s.platform_token("acme/outage"), &[]).await;
    assert_eq!(body["error"], "temporarily_unavailable");
    let r = s.http.get(b.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = s
        .http
        .post(b.url("/v1/introspect"))
        .bearer_auth(&s.admin)
        .form(&[("token", revoked.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "introspection fails closed too");
    assert_eq!(
        s.http.get(b.url("/healthz")).send().await.unwrap().status(),
        200
    );

    s.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    while Instant::now() < deadline {
        status = s
            .exchange(&b, &s.platform_token("acme/outage"), &[])
            .await
            .0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "service resumes by itself");
    assert!(
        !s.active(&b, &revoked).await,
        "the revocation made before the outage still holds"
    );
}

#[tokio::test]
async fn fail_open_keeps_issuing_when_configured() {
    let mut s = Stack::new();
    let b = s.broker_with("fail_open = true");
    let held = s.issue(&b, "acme/open").await;
    s.redis.stop();
    // Wait until the broker itself reports the mirror stale, then keep issuing.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if s.http.get(b.url("/readyz")).send().await.unwrap().status() == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.http.get(b.url("/readyz")).send().await.unwrap().status(),
        503
    );
    let (status, body) = s.exchange(&b, &s.platform_token("acme/open"), &[]).await;
    assert_eq!(
        status, 200,
        "fail_open keeps issuing while Redis is down: {body}"
    );
    assert!(
        s.active(&b, &held).await,
        "and introspection keeps answering"
    );
    s.redis.restart();
}

#[tokio::test]
async fn the_revocation_feed_and_stream_carry_entries_with_cursors() {
    let s = Stack::new();
    let b = s.broker();
    let feed = |since: Option<String>| {
        let http = s.http.clone();
        let url = b.url("/v1/revocations");
        let admin = s.admin.clone();
        async move {
            let mut req = http.get(url).bearer_auth(admin);
            if let Some(c) = since {
                req = req.query(&[("since", c)]);
            }
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    s.admin_post(&b, "/v1/revoke", json!({"credential_id": "first"}))
        .await;
    // Wait until the broker's mirror has the entry from the stream (it carries the cursor).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut snapshot = Value::Null;
    while Instant::now() < deadline {
        let (status, body) = feed(None).await;
        assert_eq!(status, 200);
        if body["entries"].as_array().is_some_and(|e| !e.is_empty()) && body["cursor"] != "0-0" {
            snapshot = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(snapshot["entries"][0]["value"], "first", "{snapshot}");
    let cursor = snapshot["cursor"].as_str().unwrap().to_string();

    s.admin_post(&b, "/v1/revoke", json!({"credential_id": "second"}))
        .await;
    let (status, after) = feed(Some(cursor.clone())).await;
    assert_eq!(status, 200, "{after}");
    let values: Vec<&str> = after["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, vec!["second"], "only what came after the cursor");
    assert_ne!(after["cursor"], cursor);

    let (status, _) = feed(Some("not-a-cursor".into())).await;
    assert_eq!(status, 400);

    // The SSE stream: resume after the first cursor, see "second", then a live "third".
    let mut resp = s
        .http
        .get(b.url("/v1/revocations/stream"))
        .query(&[("since", cursor.as_str())])
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    s.admin_post(&b, "/v1/revoke", json!({"credential_id": "third"}))
        .await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !seen.contains("\"third\"") {
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            _ => break,
        }
    }
    assert!(seen.contains("event: revocation"), "{seen}");
    assert!(seen.contains("\"second\""), "{seen}");
    assert!(seen.contains("\"third\""), "{seen}");
    assert!(
        !seen.contains("\"first\""),
        "the stream resumed after the cursor: {seen}"
    );
    assert!(seen.contains("id: "), "{seen}");

    // Without credentials the feed is closed.
    let r = s.http.get(b.url("/v1/revocations")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn admin_cli_commands_drive_the_api() {
    let s = Stack::new();
    let b = s.broker();
    let token = s.issue(&b, "acme/cli").await;
    let run = |args: &[&str]| {
        std::process::Command::new(support::broker::BIN)
            .args(args)
            .env(
                "CREDBROKER_URL",
                format!("https://localhost:{}", b.https.port()),
            )
            .env("CREDBROKER_CA_FILE", s.keys.path("ca.pem"))
            .env("CREDBROKER_ADMIN_TOKEN", &s.admin)
            .output()
            .unwrap()
    };
    let jti = claims(&token)["jti"].as_str().unwrap().to_string();
    let out = run(&["revoke", "--id", &jti, "--reason", "cli test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&jti));
    assert!(!s.active(&b, &token).await);

    let out = run(&[
        "join-token",
        "create",
        "--spiffe-id",
        "spiffe://example.org/host/cli",
        "--ttl",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let join = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(join.lines().count(), 1, "the token alone");
    assert!(join.len() >= 40);

    let out = run(&[
        "lock",
        "--spiffe-id",
        "spiffe://example.org/ci/acme/cli",
        "--ttl",
        "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["identities", "--format", "json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = listed["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["spiffe_id"] == "spiffe://example.org/ci/acme/cli")
        .unwrap();
    assert_eq!(me["locked"], true);
    let out = run(&["identities", "--owner", "team-platform"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme/cli"));
    let out = run(&["unlock", "--spiffe-id", "spiffe://example.org/ci/acme/cli"]);
    assert!(out.status.success());

    // Errors are one line with the broker's reason, and distinct exit codes.
    let out = run(&["revoke", "--spiffe-id", "spiffe://evil.org/x"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("trust domain"), "{stderr}");
    let out = std::process::Command::new(support::broker::BIN)
        .args([
            "revoke",
            "--id",
            "x",
            "--broker",
            "https://127.0.0.1:9",
            "--admin-token",
            "t",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let out = run(&["revoke"]);
    assert_eq!(out.status.code(), Some(2), "bad usage");
}
