//! The command line: `keys generate`, `serve` config errors, `policy`, and `dev`
//! exercised as a newcomer would (running the commands it prints).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::broker::{BIN, BrokerProcess, KeyDir, run_cli};

#[test]
fn keys_generate_writes_a_complete_set_and_never_overwrites() {
    let keys = KeyDir::generate();
    for name in [
        "jwt-es256.key",
        "ca.pem",
        "ca.key",
        "broker-tls.pem",
        "broker-tls.key",
        "attestation-ca.pem",
        "attestation-ca.key",
        "client.pem",
        "client.key",
        "admin-token",
        "broker.toml",
    ] {
        assert!(keys.path(name).is_file(), "{name} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for secret in [
            "jwt-es256.key",
            "ca.key",
            "broker-tls.key",
            "admin-token",
            "client.key",
        ] {
            let mode = std::fs::metadata(keys.path(secret))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{secret} must not be readable by others: {mode:o}"
            );
        }
    }
    let before = std::fs::read(keys.path("ca.key")).unwrap();
    let out = run_cli(&[
        "keys",
        "generate",
        "--out",
        keys.dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "a second generate must refuse");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains("exists"), "{stderr}");
    assert_eq!(
        std::fs::read(keys.path("ca.key")).unwrap(),
        before,
        "nothing overwritten"
    );

    // The generated config is valid and its policy lints clean.
    let out = run_cli(&[
        "policy",
        "check",
        "--config",
        keys.path("broker.toml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn generated_config_serves_https_against_real_redis() {
    let redis = support::redis::RedisServer::start();
    let keys = KeyDir::generate();
    let config = std::fs::read_to_string(keys.path("broker.toml"))
        .unwrap()
        .replace("redis://127.0.0.1:6379/0", &redis.url)
        .replace("127.0.0.1:8443", "127.0.0.1:0");
    let broker = BrokerProcess::start(&keys, &config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = support::broker::client(&keys, None);
        let r = http.get(broker.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let jwks: serde_json::Value = http
            .get(broker.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(jwks["keys"][0]["alg"], "ES256");
    });
}

#[test]
fn config_errors_name_file_table_and_key_and_refuse_to_start() {
    let keys = KeyDir::generate();
    let path = keys.path("bad.toml");
    let config = std::fs::read_to_string(keys.path("broker.toml"))
        .unwrap()
        .replace("owner = \"team-infra\"", "");
    std::fs::write(&path, config).unwrap();
    let out = run_cli(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("rule"), "{stderr}");
    assert!(stderr.contains("owner"), "{stderr}");

    std::fs::write(
        &path,
        "trust_domain = \"example.org\"\n[jwt]\nsigning_keys = 5\n",
    )
    .unwrap();
    let out = run_cli(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");

    let out = run_cli(&["serve", "--config", "/nonexistent/broker.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/broker.toml"));

    // A missing JWKS file is a start-up error, not a panic later.
    let config = std::fs::read_to_string(keys.path("broker.toml")).unwrap()
        + "\n[[attestor]]\nname = \"k8s\"\nkind = \"jwt\"\nissuer = \"https://k8s\"\njwks_file = \"missing.json\"\naudiences = [\"x\"]\n";
    std::fs::write(&path, config).unwrap();
    let out = run_cli(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.json"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn policy_explain_prints_the_decision_offline() {
    let keys = KeyDir::generate();
    let config = std::fs::read_to_string(keys.path("broker.toml")).unwrap()
        + r#"
[[attestor]]
name = "gh"
kind = "jwt"
issuer = "https://token.actions.githubusercontent.com"
jwks_file = "gh.json"
audiences = ["credbroker"]

[[rule]]
name = "deploy-from-main"
attestor = "gh"
owner = "team-platform"
match = { "/repository" = "acme/*", "/ref" = "refs/heads/main" }
spiffe_id = "spiffe://example.org/ci/github/{/repository}"
audiences = ["deploy-api"]
"#;
    let path = keys.path("explain.toml");
    std::fs::write(&path, config).unwrap();
    let claims = keys.path("claims.json");
    std::fs::write(
        &claims,
        r#"{"iss": "https://token.actions.githubusercontent.com", "repository": "acme/web", "ref": "refs/heads/main"}"#,
    )
    .unwrap();
    let out = run_cli(&[
        "policy",
        "explain",
        "--config",
        path.to_str().unwrap(),
        "--claims",
        claims.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deploy-from-main"), "{stdout}");
    assert!(
        stdout.contains("spiffe://example.org/ci/github/acme/web"),
        "{stdout}"
    );

    std::fs::write(
        &claims,
        r#"{"iss": "https://token.actions.githubusercontent.com", "repository": "acme/web", "ref": "refs/heads/dev"}"#,
    )
    .unwrap();
    let out = run_cli(&[
        "policy",
        "explain",
        "--config",
        path.to_str().unwrap(),
        "--claims",
        claims.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("deploy-from-main") && stdout.contains("/ref"),
        "{stdout}"
    );
}

#[test]
fn policy_check_reports_problems() {
    let keys = KeyDir::generate();
    let config = std::fs::read_to_string(keys.path("broker.toml")).unwrap()
        + r#"
[[rule]]
name = "catch-all"
attestor = "legacy-pki"
owner = "team-x"
spiffe_id = "spiffe://example.org/host/any"
credentials = ["jwt"]
audiences = ["inventory"]

[[rule]]
name = "shadowed"
attestor = "legacy-pki"
owner = "team-x"
match = { "/subject/o" = "acme-hosts" }
spiffe_id = "spiffe://example.org/host/{/subject/cn}"
audiences = ["inventory"]
"#;
    let path = keys.path("lint.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_cli(&["policy", "check", "--config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("shadowed"), "{stdout}");
    assert!(stdout.to_lowercase().contains("unreachable"), "{stdout}");
}

/// base64url tokens and credential ids may begin with '-': they must not be taken for flags.
#[test]
fn values_that_begin_with_a_dash_are_accepted() {
    let out = run_cli(&[
        "revoke",
        "--id",
        "-Ab3_credential-id",
        "--broker",
        "https://127.0.0.1:9",
        "--admin-token",
        "-lX2admin-token",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "reached the network, not a usage error: {stderr}"
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["dev", "--help"],
        vec!["keys", "generate", "--help"],
        vec!["policy", "check", "--help"],
        vec!["policy", "explain", "--help"],
        vec!["token", "--help"],
        vec!["agent", "--help"],
    ] {
        let out = run_cli(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    for bad in [
        vec!["no-such-command"],
        vec!["keys", "generate"],
        vec!["serve", "--config"],
        vec!["policy", "explain", "--bogus"],
    ] {
        let out = run_cli(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "one clear line for {bad:?}: {stderr}"
        );
        assert!(stderr.starts_with("credbroker: "), "{stderr}");
    }
}

/// Runs `credbroker dev` and every command block it prints, the way a newcomer would.
#[test]
fn dev_prints_commands_that_work() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .env("CREDBROKER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        printed.push_str(&line);
        if line.contains("Stop with Ctrl-C") {
            break;
        }
    }
    assert!(
        printed.contains("Stop with Ctrl-C"),
        "dev did not finish its guide:\n{printed}"
    );

    // Collect the exports and each numbered step's commands (with continuation lines).
    let exports: Vec<&str> = printed
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("export "))
        .collect();
    let mut steps: Vec<Vec<String>> = Vec::new();
    let mut current: Option<String> = None;
    for line in printed.lines() {
        let t = line.trim();
        if let Some(cmd) = current.as_mut() {
            cmd.push('\n');
            cmd.push_str(t);
            if !t.ends_with('\\') {
                steps.last_mut().unwrap().push(current.take().unwrap());
            }
            continue;
        }
        if t.starts_with(|c: char| c.is_ascii_digit()) && t.contains(')') {
            steps.push(Vec::new());
        } else if (t.starts_with("curl ")
            || t.contains(" policy explain ")
            || t.contains(" token --from ")
            || t.contains(" agent --once "))
            && !steps.is_empty()
        {
            if t.ends_with('\\') {
                current = Some(t.to_string());
            } else {
                steps.last_mut().unwrap().push(t.to_string());
            }
        }
    }
    assert!(steps.len() >= 6, "expected numbered steps:\n{printed}");
    let run = |cmd: &str| {
        let script = format!("{}\n{cmd}", exports.join("\n"));
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };

    // 1) the exchange gives a token.
    let (ok, out) = run(&steps[0][0]);
    assert!(ok && out.contains("access_token"), "step 1: {out}");
    // 2) the denial explains itself.
    let (_, out) = run(&steps[1][0]);
    assert!(
        out.contains("invalid_request") && out.contains("demo-ci-main"),
        "step 2: {out}"
    );
    // 3) the join token works once, then not again.
    let (_, out) = run(&steps[2][0]);
    assert!(out.contains("access_token"), "step 3: {out}");
    let (_, out) = run(&steps[2][0]);
    assert!(out.contains("already used"), "step 3 replay: {out}");
    // 4) verification metadata.
    for cmd in &steps[3] {
        let (ok, out) = run(cmd);
        assert!(ok && out.contains('{'), "step 4 {cmd}: {out}");
    }
    // 5) policy explain names the rule and the failed condition.
    let (_, out) = run(&steps[4][0]);
    assert!(
        out.contains("demo-ci-main") && out.contains("/ref"),
        "step 5: {out}"
    );

    // 6) the CI client swaps the demo token for a scoped credential.
    let (ok, out) = run(&steps[5][0]);
    assert!(
        ok && out.contains("access_token") && out.contains("\"scope\":\"read\""),
        "step 6: {out}"
    );
    // 7) the agent bootstraps over the mTLS door; its SVID then gets a JWT with client_credentials.
    let (ok, out) = run(&steps[6][0]);
    assert!(ok, "step 7 agent: {out}");
    for file in ["svid.pem", "svid.key", "bundle.pem"] {
        assert!(
            data.path().join("agent").join(file).exists(),
            "step 7: {file}"
        );
    }
    let (ok, out) = run(&steps[6][1]);
    assert!(
        ok && out.contains("access_token"),
        "step 7 client_credentials: {out}"
    );

    let _ = child.kill();
    let _ = child.wait();
}
