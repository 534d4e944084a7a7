//! The CI door end to end: `credbroker token` (the real binary) against a real broker,
//! with a loopback server standing in for GitHub's OIDC token-request endpoint, and a
//! scripted fake broker for the retry rules. SPEC §10 `token`.

mod support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::broker::{BIN, BrokerProcess, KeyDir, base_config, decode_segment};
use support::issuer::{ISSUER, TestIssuer};

// ---------------------------------------------------------------------------------------
// A tiny scripted HTTP/1.1 server on loopback (one request per connection).

#[derive(Debug, Clone)]
struct SeenRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl SeenRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn query(&self) -> Vec<(String, String)> {
        let q = self.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        serde_urlencoded::from_str(q).unwrap()
    }
}

/// A canned answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);
type Handler = dyn Fn(&SeenRequest) -> Answer + Send + Sync;

struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl FakeServer {
    fn start(handler: Box<Handler>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else {
                    continue;
                };
                log.lock().unwrap().push(request.clone());
                let (status, headers, body) = handler(&request);
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&body);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        FakeServer { addr, seen }
    }

    /// Answers with `answers` in order, repeating the last one.
    fn scripted(answers: Vec<Answer>) -> FakeServer {
        let queue = Mutex::new(VecDeque::from(answers));
        FakeServer::start(Box::new(move |_| {
            let mut q = queue.lock().unwrap();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().cloned().unwrap()
            }
        }))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<SeenRequest> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(SeenRequest {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Behaves like GitHub's token-request endpoint: checks the bearer and the `audience`
/// query parameter, and answers `{"value": <a platform token for that audience>}`.
fn fake_github(issuer: Arc<TestIssuer>, bearer: &'static str) -> FakeServer {
    FakeServer::start(Box::new(move |req| {
        if req.method != "GET" || !req.target.starts_with("/_apis/token?") {
            return (404, vec![], "{}".into());
        }
        if req.header("authorization") != Some(&format!("Bearer {bearer}")) {
            return (401, vec![], r#"{"message":"bad bearer"}"#.into());
        }
        let query = req.query();
        let Some((_, audience)) = query.iter().find(|(k, _)| k == "audience") else {
            return (400, vec![], r#"{"message":"no audience"}"#.into());
        };
        let mut claims = TestIssuer::claims("acme/web", "refs/heads/main");
        claims.insert("aud".into(), json!(audience));
        let token = issuer.sign_rs256(&claims);
        (200, vec![], json!({"count": 1, "value": token}).to_string())
    }))
}

// ---------------------------------------------------------------------------------------
// The real broker and the binary.

struct Fixture {
    keys: KeyDir,
    issuer: Arc<TestIssuer>,
    broker: BrokerProcess,
}

const RULES: &str = r#"
[[attestor]]
name = "ci"
kind = "jwt"
issuer = "ISSUER"
jwks_file = "ci-jwks.json"
audiences = ["credbroker"]
algorithms = ["RS256", "ES256"]

[[attestor]]
name = "bootstrap"
kind = "join_token"

[[rule]]
name = "deploy-from-main"
attestor = "ci"
owner = "team-platform"
match = { "/repository" = "acme/*", "/ref" = "refs/heads/main" }
spiffe_id = "spiffe://example.org/ci/github/{/repository}"
credentials = ["jwt"]
audiences = ["deploy-api", "inventory"]
scopes = ["deploy:staging", "deploy:prod"]
max_ttl = "15m"

[[rule]]
name = "join-token-hosts"
attestor = "bootstrap"
owner = "team-infra"
spiffe_id = "{/spiffe_id}"
credentials = ["jwt"]
audiences = ["inventory"]
"#;

fn start() -> Fixture {
    let keys = KeyDir::generate();
    let issuer = Arc::new(TestIssuer::new());
    issuer.write_jwks(&keys.path("ci-jwks.json"));
    let config = base_config(&keys, "store = \"memory\"")
        + &RULES.replace("\"ISSUER\"", &format!("{ISSUER:?}"));
    let broker = BrokerProcess::start(&keys, &config);
    Fixture {
        keys,
        issuer,
        broker,
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        &self.stdout
    }

    /// Asserts the exit code and the one-line error; returns the line.
    fn fails(&self, code: i32) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "stdout: {} stderr: {}",
            self.stdout,
            self.stderr
        );
        assert_eq!(
            self.stderr.trim().lines().count(),
            1,
            "one clear line: {}",
            self.stderr
        );
        assert!(self.stdout.is_empty(), "nothing on stdout: {}", self.stdout);
        self.stderr.trim()
    }

    /// Asserts a usage error (exit 2); clap's own messages span several lines.
    fn usage(&self) -> &str {
        assert_eq!(self.code, Some(2), "stderr: {}", self.stderr);
        assert!(self.stdout.is_empty(), "nothing on stdout: {}", self.stdout);
        &self.stderr
    }
}

/// Runs `credbroker token ARGS` with only the given environment (no proxies, no
/// CREDBROKER_* or GitHub variables from the test's own environment).
fn token(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(BIN)
        .arg("token")
        .args(args)
        .env_clear()
        .env("CREDBROKER_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Fixture {
    fn broker_url(&self) -> String {
        format!("https://localhost:{}", self.broker.https.port())
    }

    fn ca(&self) -> String {
        self.keys.path("ca.pem").to_str().unwrap().to_string()
    }

    /// `--broker URL --ca-file CA` followed by `args`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let url = self.broker_url();
        let ca = self.ca();
        let mut all = vec!["--broker", &url, "--ca-file", &ca];
        all.extend_from_slice(args);
        token(&all, env)
    }

    fn main_token(&self) -> String {
        self.issuer
            .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"))
    }

    fn join_token(&self, spiffe_id: &str) -> String {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let http = support::broker::client(&self.keys, None);
            let resp = http
                .post(self.broker.url("/v1/join-tokens"))
                .bearer_auth(self.keys.admin_token())
                .json(&json!({"spiffe_id": spiffe_id, "ttl": 600}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
            let body: Value = resp.json().await.unwrap();
            body["token"].as_str().unwrap().to_string()
        })
    }
}

fn claims_of(token: &str) -> Value {
    decode_segment(token.trim(), 1)
}

fn assert_ci_credential(token: &str, audience: &str) {
    let claims = claims_of(token);
    assert_eq!(claims["sub"], "spiffe://example.org/ci/github/acme/web");
    assert_eq!(claims["aud"], audience, "{claims}");
}

// ---------------------------------------------------------------------------------------

#[test]
fn every_source_gets_a_credential() {
    let f = start();

    // github-actions: the request URL already carries a query string, as GitHub's does.
    let github = fake_github(f.issuer.clone(), "request-token-123");
    let request_url = format!("{}/_apis/token?api-version=2.0", github.url());
    let gh_env = [
        ("ACTIONS_ID_TOKEN_REQUEST_URL", request_url.as_str()),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token-123"),
    ];
    let out = f.run(
        &["--from", "github-actions", "--audience", "deploy-api"],
        &gh_env,
    );
    assert_ci_credential(out.ok(), "deploy-api");
    let seen = github.requests();
    assert_eq!(seen.len(), 1);
    let query = seen[0].query();
    assert!(
        query.contains(&("api-version".into(), "2.0".into())),
        "{query:?}"
    );
    assert!(
        query.contains(&("audience".into(), "credbroker".into())),
        "{query:?}"
    );

    // --platform-audience is what GitHub is asked for (the broker wants `credbroker`,
    // so a token for another audience is refused there).
    let out = f.run(
        &[
            "--from",
            "github-actions",
            "--platform-audience",
            "not-credbroker",
            "--audience",
            "deploy-api",
        ],
        &gh_env,
    );
    let line = out.fails(3);
    assert!(line.contains("invalid_request"), "{line}");
    let last = github.requests().pop().unwrap();
    assert!(
        last.query()
            .contains(&("audience".into(), "not-credbroker".into()))
    );
    // A request URL without a query string gets `?audience=`.
    let bare_url = format!("{}/_apis/token", github.url());
    let out = f.run(
        &["--from", "github-actions", "--audience", "deploy-api"],
        &[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", bare_url.as_str()),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token-123"),
        ],
    );
    // The fake endpoint only answers `/_apis/token?…`, so this reaching it with a query proves the `?`.
    assert_ci_credential(out.ok(), "deploy-api");

    // gitlab: the id_tokens variable, default name and --gitlab-var.
    let platform = f.main_token();
    let out = f.run(
        &["--from", "gitlab", "--audience", "inventory"],
        &[("CREDBROKER_ID_TOKEN", platform.as_str())],
    );
    assert_ci_credential(out.ok(), "inventory");
    let out = f.run(
        &[
            "--from",
            "gitlab",
            "--gitlab-var",
            "MY_ID_TOKEN",
            "--audience",
            "inventory",
        ],
        &[("MY_ID_TOKEN", platform.as_str())],
    );
    assert_ci_credential(out.ok(), "inventory");

    // kubernetes: the projected token file (path overridden; a trailing newline is fine).
    let file = f.keys.path("projected-token");
    std::fs::write(&file, format!("{platform}\n")).unwrap();
    let out = f.run(
        &[
            "--from",
            "kubernetes",
            "--token-file",
            file.to_str().unwrap(),
            "--audience",
            "deploy-api",
        ],
        &[],
    );
    assert_ci_credential(out.ok(), "deploy-api");

    // file:PATH and env:VAR.
    let from_file = format!("file:{}", file.display());
    let out = f.run(&["--from", &from_file, "--audience", "deploy-api"], &[]);
    assert_ci_credential(out.ok(), "deploy-api");
    let out = f.run(
        &["--from", "env:PLATFORM_TOKEN", "--audience", "deploy-api"],
        &[("PLATFORM_TOKEN", platform.as_str())],
    );
    assert_ci_credential(out.ok(), "deploy-api");

    // join-token:T works once; the second use is refused with the broker's reason.
    let join = f.join_token("spiffe://example.org/host/ci-1");
    let from_join = format!("join-token:{join}");
    let out = f.run(&["--from", &from_join, "--audience", "inventory"], &[]);
    let claims = claims_of(out.ok());
    assert_eq!(claims["sub"], "spiffe://example.org/host/ci-1");
    let out = f.run(&["--from", &from_join, "--audience", "inventory"], &[]);
    let line = out.fails(3);
    assert!(line.contains("already used"), "{line}");
    assert!(!line.contains(&join), "the join token leaked: {line}");

    // A join token in a file is recognised as one (it is not a JWT).
    let join = f.join_token("spiffe://example.org/host/ci-2");
    let join_file = f.keys.path("join-token");
    std::fs::write(&join_file, &join).unwrap();
    let from_join_file = format!("file:{}", join_file.display());
    let out = f.run(&["--from", &from_join_file, "--audience", "inventory"], &[]);
    assert_eq!(claims_of(out.ok())["sub"], "spiffe://example.org/host/ci-2");
}

#[test]
fn every_format_prints_what_it_promises() {
    let f = start();
    let platform = f.main_token();
    let env = [("PLATFORM_TOKEN", platform.as_str())];
    let base = ["--from", "env:PLATFORM_TOKEN", "--audience", "deploy-api"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        f.run(&args, &env)
    };

    // raw: the token alone on one line.
    let out = with(&["--format", "raw"]);
    let raw = out.ok();
    assert_eq!(raw.lines().count(), 1);
    assert_eq!(raw.trim().split('.').count(), 3, "{raw}");

    // json: the token response; --ttl in seconds, scopes joined.
    let out = with(&[
        "--format",
        "json",
        "--ttl",
        "2m",
        "--scope",
        "deploy:staging",
        "--scope",
        "deploy:prod",
    ]);
    let body: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(body["expires_in"], 120, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "deploy:staging deploy:prod");
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["scope"], "deploy:staging deploy:prod");

    // env: NAME=<token>, name from --env-name.
    let out = with(&["--format", "env"]);
    let line = out.ok().trim().to_string();
    let jwt = line.strip_prefix("CREDBROKER_TOKEN=").unwrap();
    assert_ci_credential(jwt, "deploy-api");
    let out = with(&["--format", "env", "--env-name", "DEPLOY_TOKEN"]);
    assert!(out.ok().starts_with("DEPLOY_TOKEN=ey"), "{}", out.stdout);
    assert!(
        with(&["--format", "env", "--env-name", "NOT-A-NAME"])
            .fails(2)
            .contains("--env-name")
    );

    // github-env: the mask comes first on stdout, the variable is appended to $GITHUB_ENV
    // after what earlier steps wrote (even an unterminated last line).
    let github_env = f.keys.path("github-env");
    std::fs::write(&github_env, "EARLIER=1").unwrap();
    let github_env_str = github_env.to_str().unwrap();
    let mut args = base.to_vec();
    args.extend_from_slice(&["--format", "github-env"]);
    let out = f.run(&args, &[env[0], ("GITHUB_ENV", github_env_str)]);
    let stdout = out.ok();
    let first = stdout.lines().next().unwrap();
    let masked = first.strip_prefix("::add-mask::").expect("mask first");
    assert_eq!(stdout, format!("::add-mask::{masked}\n"), "only the mask");
    assert_ci_credential(masked, "deploy-api");
    let written = std::fs::read_to_string(&github_env).unwrap();
    assert_eq!(written, format!("EARLIER=1\nCREDBROKER_TOKEN={masked}\n"));
    assert!(!out.stderr.contains(masked));

    // github-env outside GitHub Actions is a usage error, found before any exchange.
    let out = f.run(&args, &env);
    assert!(out.fails(2).contains("GITHUB_ENV"));

    // Nothing ever prints the platform token.
    for out in [with(&["--format", "json"]), with(&["--format", "env"])] {
        assert!(!out.stdout.contains(&platform) && !out.stderr.contains(&platform));
    }
}

#[test]
fn failures_exit_with_distinct_codes_and_one_clear_line() {
    let f = start();
    let dev_token = f
        .issuer
        .sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/dev"));

    // 3: denied by policy; the broker's description (closest rule, failed condition) shown.
    let out = f.run(
        &["--from", "env:T", "--audience", "deploy-api"],
        &[("T", dev_token.as_str())],
    );
    let line = out.fails(3);
    assert!(line.contains("invalid_request"), "{line}");
    assert!(
        line.contains("deploy-from-main") && line.contains("/ref"),
        "{line}"
    );
    assert!(!line.contains(&dev_token), "platform token leaked: {line}");
    // 3: an audience the rule does not allow.
    let platform = f.main_token();
    let out = f.run(
        &["--from", "env:T", "--audience", "payments"],
        &[("T", platform.as_str())],
    );
    assert!(out.fails(3).contains("invalid_target"));

    // 4: nothing listens there; a bounded number of attempts, then one line.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}");
    let out = token(
        &["--broker", &url, "--from", "env:T"],
        &[("T", platform.as_str())],
    );
    let line = out.fails(4);
    assert!(
        line.contains("cannot reach the broker") && line.contains("4 attempts"),
        "{line}"
    );
    // 4 as well for a TLS failure: the broker's CA is not trusted without --ca-file.
    let out = token(
        &["--broker", &f.broker_url(), "--from", "env:T"],
        &[("T", platform.as_str())],
    );
    let line = out.fails(4);
    assert!(
        line.contains("cannot reach the broker") && line.contains("1 attempt"),
        "{line}"
    );

    // 2: bad usage, before anything is fetched or sent (and no value is echoed).
    assert!(token(&["--broker", &url], &[]).usage().contains("--from"));
    let out = f.run(&["--from", "join-tokn:sekrit-join-token"], &[]);
    let line = out.fails(2);
    assert!(!line.contains("sekrit"), "{line}");
    assert!(
        f.run(&["--from", "gitlab", "--ttl", "5 minutes"], &[])
            .fails(2)
            .contains("--ttl")
    );
    assert!(
        f.run(&["--from", "gitlab", "--format", "yaml"], &[])
            .usage()
            .contains("yaml")
    );
    assert!(
        token(&["--from", "gitlab"], &[])
            .usage()
            .contains("--broker")
    );
    let out = token(
        &[
            "--broker",
            &f.broker_url(),
            "--ca-file",
            "/nonexistent/ca.pem",
            "--from",
            "gitlab",
        ],
        &[],
    );
    assert!(out.fails(2).contains("/nonexistent/ca.pem"));
    // CREDBROKER_URL / CREDBROKER_CA_FILE stand in for the flags.
    let out = token(
        &["--from", "env:T", "--audience", "deploy-api"],
        &[
            ("T", platform.as_str()),
            ("CREDBROKER_URL", f.broker_url().as_str()),
            ("CREDBROKER_CA_FILE", f.ca().as_str()),
        ],
    );
    assert_ci_credential(out.ok(), "deploy-api");

    // 5: no platform token.
    assert!(
        f.run(&["--from", "gitlab"], &[])
            .fails(5)
            .contains("CREDBROKER_ID_TOKEN")
    );
    assert!(
        f.run(&["--from", "env:NOPE"], &[])
            .fails(5)
            .contains("NOPE")
    );
    let out = f.run(
        &["--from", "kubernetes", "--token-file", "/nonexistent/token"],
        &[],
    );
    assert!(out.fails(5).contains("/nonexistent/token"));
    let out = f.run(&["--from", "kubernetes"], &[]);
    if !std::path::Path::new("/var/run/secrets/tokens/credbroker").exists() {
        assert!(out.fails(5).contains("/var/run/secrets/tokens/credbroker"));
    }
    assert!(
        f.run(&["--from", "github-actions"], &[])
            .fails(5)
            .contains("id-token: write")
    );
    let github = fake_github(f.issuer.clone(), "the-right-one");
    let request_url = format!("{}/_apis/token?api-version=2.0", github.url());
    let out = f.run(
        &["--from", "github-actions"],
        &[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", request_url.as_str()),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "a-wrong-one"),
        ],
    );
    let line = out.fails(5);
    assert!(line.contains("HTTP 401"), "{line}");
    assert!(!line.contains("a-wrong-one"), "{line}");
}

fn issued_answer() -> Answer {
    let body = json!({
        "access_token": "eyJhbGciOiJFUzI1NiJ9.e30.c2ln",
        "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_type": "Bearer",
        "expires_in": 300,
    });
    (200, vec![], body.to_string())
}

fn unavailable_answer() -> Answer {
    (
        503,
        vec![],
        r#"{"error":"temporarily_unavailable","error_description":"revocation mirror is stale"}"#
            .into(),
    )
}

#[test]
fn retries_only_on_503_429_and_connection_errors() {
    let run = |server: &FakeServer| {
        token(
            &[
                "--broker",
                &server.url(),
                "--from",
                "join-token:abc",
                "--audience",
                "x",
            ],
            &[],
        )
    };

    // 503 once, then the token.
    let server = FakeServer::scripted(vec![unavailable_answer(), issued_answer()]);
    assert_eq!(run(&server).ok().trim(), "eyJhbGciOiJFUzI1NiJ9.e30.c2ln");
    assert_eq!(server.hits(), 2);
    let form: Vec<(String, String)> =
        serde_urlencoded::from_str(&server.requests()[1].body).unwrap();
    assert!(form.contains(&(
        "subject_token_type".into(),
        "urn:credbroker:token-type:join-token".into()
    )));
    assert!(form.contains(&("audience".into(), "x".into())));

    // 429 with Retry-After, then the token.
    let server = FakeServer::scripted(vec![
        (
            429,
            vec![("Retry-After", "1".into())],
            r#"{"error":"slow_down","error_description":"rate limited"}"#.into(),
        ),
        issued_answer(),
    ]);
    run(&server).ok();
    assert_eq!(server.hits(), 2);

    // 503 every time: a bounded number of attempts, then exit 4 with the broker's reason.
    let server = FakeServer::scripted(vec![unavailable_answer()]);
    let out = run(&server);
    let line = out.fails(4);
    assert!(line.contains("revocation mirror is stale"), "{line}");
    assert_eq!(server.hits(), 4);

    // A Retry-After beyond the retry budget is not waited for.
    let server = FakeServer::scripted(vec![(
        429,
        vec![("Retry-After", "3600".into())],
        r#"{"error":"slow_down","error_description":"rate limited"}"#.into(),
    )]);
    let line = run(&server).fails(4).to_string();
    assert!(
        line.contains("slow_down") && line.contains("3600"),
        "{line}"
    );
    assert_eq!(server.hits(), 1);

    // 500 and 4xx are answers, not reasons to retry (the token may have been spent).
    let server = FakeServer::scripted(vec![(500, vec![], "oops".into())]);
    run(&server).fails(4);
    assert_eq!(server.hits(), 1);
    let server = FakeServer::scripted(vec![(
        400,
        vec![],
        r#"{"error":"invalid_request","error_description":"join token already used"}"#.into(),
    )]);
    assert!(run(&server).fails(3).contains("join token already used"));
    assert_eq!(server.hits(), 1);

    // A 200 without a usable token is a failure, not a blank line.
    let server = FakeServer::scripted(vec![(200, vec![], r#"{"access_token":"a\nB=c"}"#.into())]);
    run(&server).fails(1);
}
