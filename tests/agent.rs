//! `credbroker agent` against a real broker: bootstrap, atomic files, renewal over mTLS,
//! `--exec-on-rotate`, clean shutdown on SIGTERM (SPEC §10).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use credbroker::client::agent::{AtomicFile, write_atomic};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use support::broker::{BIN, BrokerProcess, KeyDir, base_config, client};
use x509_parser::prelude::{FromDer, X509Certificate};

fn config(keys: &KeyDir) -> String {
    base_config(keys, "store = \"memory\"")
        + r#"
[[attestor]]
name = "legacy-pki"
kind = "mtls"
ca_bundle = "attestation-ca.pem"

[[attestor]]
name = "bootstrap"
kind = "join_token"

[[rule]]
name = "legacy-hosts"
attestor = "legacy-pki"
owner = "team-infra"
match = { "/subject/o" = "acme-hosts" }
spiffe_id = "spiffe://example.org/host/{/subject/cn}"
credentials = ["x509"]

[[rule]]
name = "short-lived"
attestor = "bootstrap"
owner = "team-platform"
spiffe_id = "{/spiffe_id}"
credentials = ["x509"]
default_ttl = "4s"
max_ttl = "4s"
"#
}

async fn join_token(keys: &KeyDir, broker: &BrokerProcess, spiffe_id: &str) -> String {
    let resp = client(keys, None)
        .post(broker.url("/v1/join-tokens"))
        .bearer_auth(keys.admin_token())
        .json(&json!({"spiffe_id": spiffe_id, "ttl": 600}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

fn agent(keys: &KeyDir, broker: &BrokerProcess, attest: &str, out: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--attest", attest, "--out"])
        .arg(out)
        .args(["--broker", &broker.url("")])
        .arg("--ca-file")
        .arg(keys.path("ca.pem"))
        .env("CREDBROKER_LOG", "warn");
    cmd
}

/// The files verify: chain to bundle with webpki, key matches the leaf, key mode 0600.
fn assert_files_verify(out: &Path, spiffe_id: &str) -> String {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(out.join("svid.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(out.join("bundle.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .unwrap();
    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        format!("[URI({spiffe_id:?})]")
    );
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(out.join("svid.key")).unwrap()).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("svid.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    format!("{:x}", cert.tbs_certificate.serial)
}

#[tokio::test]
async fn agent_once_writes_files_that_verify() {
    let keys = KeyDir::generate();
    let broker = BrokerProcess::start(&keys, &config(&keys));
    let token = join_token(&keys, &broker, "spiffe://example.org/host/agent-once").await;
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("creds"); // created when missing
    let status = agent(&keys, &broker, &format!("join-token:{token}"), &dir)
        .arg("--once")
        .status()
        .unwrap();
    assert!(status.success());
    assert_files_verify(&dir, "spiffe://example.org/host/agent-once");

    // With an existing certificate (the `mtls` attestor's example client cert).
    let dir2 = out.path().join("cert");
    let attest = format!(
        "cert:{},{}",
        keys.path("client.pem").display(),
        keys.path("client.key").display()
    );
    let status = agent(&keys, &broker, &attest, &dir2)
        .arg("--once")
        .status()
        .unwrap();
    assert!(status.success());
    assert_files_verify(&dir2, "spiffe://example.org/host/example-host");

    // A used join token fails with one clear line and a non-zero status.
    let out3 = agent(
        &keys,
        &broker,
        &format!("join-token:{token}"),
        &out.path().join("x"),
    )
    .arg("--once")
    .output()
    .unwrap();
    assert!(!out3.status.success());
    let stderr = String::from_utf8_lossy(&out3.stderr);
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert!(
        !stderr.contains(&token),
        "the token never appears in errors"
    );
}

#[tokio::test]
async fn agent_renews_over_mtls_and_stops_on_sigterm() {
    let keys = KeyDir::generate();
    let broker = BrokerProcess::start(&keys, &config(&keys));
    let token = join_token(&keys, &broker, "spiffe://example.org/host/renewer").await;
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("rotations.log");
    let snapshots = out.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    // The files are read where the agent says they match: in the rotation hook, which runs
    // after all three are written and before the next renewal. (Read at any other moment,
    // a renewal may replace the key between reading the certificate and reading the key.)
    let hook = format!(
        "n=$(cat {log} 2>/dev/null | wc -l); mkdir {snaps}/$n && \
         cp -p \"$CREDBROKER_SVID_DIR\"/svid.pem \"$CREDBROKER_SVID_DIR\"/svid.key \
         \"$CREDBROKER_SVID_DIR\"/bundle.pem {snaps}/$n/ && echo rotated >> {log}",
        log = log.display(),
        snaps = snapshots.display(),
    );
    let mut child = agent(
        &keys,
        &broker,
        &format!("join-token:{token}"),
        &out.path().join("svid"),
    )
    .arg("--exec-on-rotate")
    .arg(hook)
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    // Bootstrap + at least two renewals (TTL 4 s → renewal about every 2 s); bounded wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rotations = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    while Instant::now() < deadline && rotations() < 3 {
        assert!(child.try_wait().unwrap().is_none(), "agent exited early");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rotations = rotations();
    assert!(
        rotations >= 3,
        "expected bootstrap + 2 renewals, saw {rotations}"
    );
    // Every rotation left a matching, verifying set, and a new SVID each time.
    let mut serials = std::collections::BTreeSet::new();
    for n in 0..rotations {
        serials.insert(assert_files_verify(
            &snapshots.join(n.to_string()),
            "spiffe://example.org/host/renewer",
        ));
    }
    assert_eq!(
        serials.len(),
        rotations,
        "a new SVID each time: {serials:?}"
    );
    // The join token is single use, so every renewal above went over mTLS with the SVID.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "clean shutdown: {status:?}");
    // At rest, the files in place are a matching set too.
    assert_files_verify(
        &out.path().join("svid"),
        "spiffe://example.org/host/renewer",
    );
    // No temporary files were left behind.
    for entry in std::fs::read_dir(out.path().join("svid")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.contains(".tmp-"), "left over: {name}");
    }
}

#[test]
fn interrupted_write_leaves_the_old_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("svid.pem");
    write_atomic(&target, b"old certificate\n", 0o644).unwrap();

    // A writer that dies halfway (an error, a panic, or the process killed before the
    // rename) never touches the target.
    let mut f = AtomicFile::create(&target, 0o644).unwrap();
    f.write(b"-----BEGIN CERTIFICATE-----\nhalf").unwrap();
    drop(f);
    assert_eq!(std::fs::read(&target).unwrap(), b"old certificate\n");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temp file removed"
    );

    // Simulate SIGKILL between write and rename: the temp file stays, the target does not change.
    let mut f = AtomicFile::create(&target, 0o644).unwrap();
    f.write(b"partial").unwrap();
    std::mem::forget(f);
    assert_eq!(std::fs::read(&target).unwrap(), b"old certificate\n");

    // A completed write replaces the content in one step, with the requested mode.
    write_atomic(&target, b"new certificate\n", 0o600).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new certificate\n");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
