//! Packaging: docker-compose.yml, the Dockerfile, the example configs and the CI and
//! Kubernetes examples. There is no `docker compose` on the build machines, so the compose
//! file is checked as YAML (services, images, volumes, health checks), its broker config
//! is loaded by the broker's own config loader, and its example workload's script is run
//! against a real broker on that config (Redis and the broker on loopback).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use credbroker::config::Config;
use serde_yaml_ng::Value;
use support::broker::{BIN, BrokerProcess};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// A YAML list of strings (or a single string) as one space-joined line.
fn joined(v: &Value) -> String {
    match v {
        Value::Sequence(items) => items.iter().map(str_of).collect::<Vec<_>>().join(" "),
        other => str_of(other).to_string(),
    }
}

#[test]
fn compose_file_declares_redis_the_broker_and_a_workload() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];

    // Redis: persisted with AOF on a named volume, health-checked.
    let redis = &services["redis"];
    assert!(str_of(&redis["image"]).starts_with("redis:"));
    assert!(
        joined(&redis["command"]).contains("--appendonly yes"),
        "AOF persistence"
    );
    let redis_volumes = joined(&redis["volumes"]);
    assert!(redis_volumes.contains(":/data"), "{redis_volumes}");
    let volume_name = redis_volumes.split(':').next().unwrap();
    assert!(
        compose["volumes"]
            .as_mapping()
            .is_some_and(|m| m.contains_key(volume_name)),
        "named volume {volume_name} declared"
    );
    assert!(joined(&redis["healthcheck"]["test"]).contains("redis-cli ping"));

    // The broker: built from this repository's Dockerfile, the example config mounted
    // read-only, waits for a healthy Redis, health-checked on /readyz.
    let broker = &services["broker"];
    assert_eq!(broker["build"]["context"], ".");
    assert_eq!(broker["build"]["dockerfile"], "Dockerfile");
    assert!(repo(str_of(&broker["build"]["dockerfile"])).is_file());
    let image = str_of(&broker["image"]);
    let command = joined(&broker["command"]);
    assert!(
        command.starts_with("serve --config /etc/credbroker/"),
        "{command}"
    );
    let volumes = joined(&broker["volumes"]);
    assert!(
        volumes.contains("./keys.example:/etc/credbroker:ro"),
        "{volumes}"
    );
    let config_name = command.rsplit('/').next().unwrap();
    assert!(repo("keys.example").join(config_name).is_file());
    assert_eq!(
        broker["depends_on"]["redis"]["condition"],
        "service_healthy"
    );
    let health = joined(&broker["healthcheck"]["test"]);
    assert!(health.contains("/readyz"), "{health}");
    assert!(joined(&broker["ports"]).contains("8443:8443"));
    assert!(
        joined(&broker["networks"]["default"]["aliases"]).contains("broker.example.org"),
        "the name in the broker's certificate"
    );

    // The example workload: the same image, after a healthy broker, using the CI door.
    let job = &services["ci-job"];
    assert_eq!(str_of(&job["image"]), image);
    assert_eq!(job["depends_on"]["broker"]["condition"], "service_healthy");
    assert!(joined(&job["command"]).contains("credbroker token --from"));

    // Every service names its image (the broker's is built, the others pulled or shared).
    for (name, service) in services.as_mapping().unwrap() {
        assert!(!service["image"].is_null(), "{name:?} has an image");
    }
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    for package in ["ca-certificates", "libssl3", "curl"] {
        assert!(dockerfile.contains(package), "{package}");
    }
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    assert!(dockerfile.contains(r#"ENTRYPOINT ["credbroker"]"#));
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

#[test]
fn example_configs_load() {
    for name in ["broker.toml", "compose-broker.toml"] {
        let path = repo("keys.example").join(name);
        if let Err(e) = Config::load(&path) {
            panic!("{name}: {e}");
        }
    }
    // The compose config must work without internet access and on the compose network.
    let compose_config = std::fs::read_to_string(repo("keys.example/compose-broker.toml")).unwrap();
    let settings: Vec<&str> = compose_config
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .collect();
    assert!(
        !settings.iter().any(|l| l.starts_with("jwks_url")),
        "offline attestors only"
    );
    assert!(compose_config.contains("redis://redis:6379/"));
    // The example admin token works against it (the compose workload uses it).
    let admin = std::fs::read_to_string(repo("keys.example/admin-token")).unwrap();
    let sha = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        admin.trim().as_bytes(),
    ));
    assert!(compose_config.contains(&sha), "token_sha256 of admin-token");
    assert!(compose_config.contains("listen = \"0.0.0.0:8443\""));
}

/// Runs the compose file's example workload script against a broker running the compose
/// config (Redis on loopback instead of the `redis` service, `localhost` instead of the
/// network alias): what `docker compose up` would do, minus the containers.
#[test]
fn compose_workload_script_gets_a_credential_from_the_compose_config() {
    let redis = support::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo("keys.example")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let config = std::fs::read_to_string(dir.path().join("compose-broker.toml"))
        .unwrap()
        .replace("redis://redis:6379/0", &redis.url)
        .replace("0.0.0.0:8443", "127.0.0.1:0");
    let config_path = dir.path().join("compose-local.toml");
    std::fs::write(&config_path, config).unwrap();
    let broker = BrokerProcess::start_with(&config_path);

    let compose = yaml("docker-compose.yml");
    let job = &compose["services"]["ci-job"];
    assert_eq!(joined(&job["entrypoint"]), "/bin/sh -ec");
    let mount = dir.path().to_str().unwrap();
    let script = str_of(&job["command"][0])
        .replace("$$", "$")
        .replace("/etc/credbroker", mount);
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("/bin/sh")
        .args(["-ec", &script])
        .env_clear()
        .env("PATH", path)
        .env("CREDBROKER_LOG", "warn")
        .env(
            "CREDBROKER_URL",
            format!("https://localhost:{}", broker.https.port()),
        )
        .env("CREDBROKER_CA_FILE", format!("{mount}/ca.pem"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let response: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let claims = support::broker::decode_segment(response["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], "spiffe://example.org/host/compose-ci-job");
    assert_eq!(claims["iss"], "https://broker.example.org:8443");
    assert!(lines.next().unwrap().contains("\"keys\""));
}

#[test]
fn ci_and_kubernetes_examples_are_wired_as_documented() {
    // GitHub Actions: may request its OIDC token, fetches with github-env, uses the token.
    let gh = yaml("examples/github-actions.yml");
    assert_eq!(gh["permissions"]["id-token"], "write");
    let steps: Vec<String> = gh["jobs"]["deploy"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str().map(String::from))
        .collect();
    let fetch = steps
        .iter()
        .position(|r| r.contains("credbroker token --from github-actions"))
        .expect("a credbroker token step");
    assert!(steps[fetch].contains("--format github-env"));
    assert!(steps[fetch].contains("--audience deploy-api"));
    assert!(
        steps[fetch + 1..]
            .iter()
            .any(|r| r.contains("$CREDBROKER_TOKEN"))
    );

    // GitLab: the id_tokens variable credbroker reads by default, with audience credbroker.
    let gl = yaml("examples/gitlab-ci.yml");
    assert_eq!(
        gl["deploy"]["id_tokens"]["CREDBROKER_ID_TOKEN"]["aud"],
        "credbroker"
    );
    let script = joined(&gl["deploy"]["script"]);
    assert!(
        script.contains("credbroker token --from gitlab"),
        "{script}"
    );

    // Kubernetes: a projected token at the default path, and the agent sidecar sharing an
    // emptyDir with the application.
    let text = std::fs::read_to_string(repo("examples/kubernetes/workload.yaml")).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_sequence().unwrap();
    let projected = volumes
        .iter()
        .find_map(|v| {
            v["projected"]["sources"]
                .as_sequence()?
                .iter()
                .find(|s| !s["serviceAccountToken"].is_null())
                .map(|s| {
                    (
                        str_of(&v["name"]).to_string(),
                        s["serviceAccountToken"].clone(),
                    )
                })
        })
        .expect("a projected service-account token");
    assert_eq!(projected.1["audience"], "credbroker");
    assert_eq!(projected.1["path"], "credbroker");
    let shared = volumes
        .iter()
        .find(|v| !v["emptyDir"].is_null())
        .map(|v| str_of(&v["name"]).to_string())
        .expect("an emptyDir");
    let sidecar = pod["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| joined(&c["args"]).starts_with("agent --attest kubernetes"))
        .expect("the agent sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    let args = joined(&sidecar["args"]);
    assert!(args.contains("--out /var/run/credbroker") && args.contains("--ca-file"));
    let mounts = |c: &Value| -> Vec<(String, String)> {
        c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| (str_of(&m["name"]).into(), str_of(&m["mountPath"]).into()))
            .collect()
    };
    let agent_mounts = mounts(sidecar);
    assert!(agent_mounts.contains(&(projected.0.clone(), "/var/run/secrets/tokens".into())));
    assert!(agent_mounts.contains(&(shared.clone(), "/var/run/credbroker".into())));
    let app = &pod["containers"][0];
    assert!(mounts(app).contains(&(shared, "/var/run/credbroker".into())));
}
