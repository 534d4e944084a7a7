//! `credbroker inspect` (SPEC §10): decoding JWTs and certificates, and checking them
//! against a running broker.

mod support;

use serde_json::{Value, json};
use support::broker::{
    BIN, BrokerProcess, KeyDir, base_config, client, decode_segment, exchange_form,
};
use support::issuer::{ISSUER, TestIssuer};

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
name = "deploy"
attestor = "ci"
owner = "team-platform"
spiffe_id = "spiffe://example.org/ci/{{/repository}}"
audiences = ["deploy-api"]
"#
    )
}

fn inspect(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(BIN)
        .arg("inspect")
        .args(args)
        .env_remove("CREDBROKER_URL")
        .env_remove("CREDBROKER_CA_FILE")
        .env_remove("CREDBROKER_ADMIN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn jwts_are_decoded_and_checked_against_the_broker() {
    let keys = KeyDir::generate();
    let issuer = TestIssuer::new();
    issuer.write_jwks(&keys.path("ci-jwks.json"));
    let broker = BrokerProcess::start(
        &keys,
        &(base_config(&keys, "store = \"memory\"") + &rules()),
    );
    let http = client(&keys, None);
    let platform = issuer.sign_rs256(&TestIssuer::claims("acme/web", "refs/heads/main"));
    let body: Value = http
        .post(broker.url("/v1/token"))
        .form(&exchange_form(&platform, &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = body["access_token"].as_str().unwrap().to_string();
    let jti = decode_segment(&token, 1)["jti"]
        .as_str()
        .unwrap()
        .to_string();

    // Decoding alone: from the argument, a file and stdin.
    let file = keys.path("token.jwt");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let at_file = format!("@{}", file.display());
    for (arg, stdin) in [
        (token.as_str(), None),
        (at_file.as_str(), None),
        ("-", Some(token.as_str())),
    ] {
        let (ok, out, err) = inspect(&[arg], stdin);
        assert!(ok, "{err}");
        assert!(
            out.contains("identity   spiffe://example.org/ci/acme/web"),
            "{out}"
        );
        assert!(out.contains("owner      team-platform"), "{out}");
        assert!(out.contains(&jti), "{out}");
        assert!(out.contains("expires"), "{out}");
    }

    let url = broker.url("");
    let ca = keys.path("ca.pem");
    let admin = keys.admin_token();
    let checked = |credential: &str| {
        inspect(
            &[
                credential,
                "--broker",
                &url,
                "--ca-file",
                ca.to_str().unwrap(),
                "--admin-token",
                &admin,
            ],
            None,
        )
    };
    let (ok, out, err) = checked(&token);
    assert!(ok, "{out}\n{err}");
    for line in [
        "signature   ok",
        "issuer      ok",
        "time        ok",
        "revocation  ok",
    ] {
        assert!(out.contains(line), "{line} missing from {out}");
    }
    assert!(!out.contains(&admin) && !err.contains(&admin));

    // A tampered signature fails, with a non-zero exit.
    let mut tampered = token.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let (ok, out, err) = checked(&tampered);
    assert!(!ok);
    assert!(out.contains("signature   FAILED"), "{out}");
    assert!(err.contains("signature"), "{err}");

    // Revoked → introspection says inactive → non-zero.
    let resp = http
        .post(broker.url("/v1/revoke"))
        .bearer_auth(&admin)
        .json(&json!({"credential_id": jti}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (ok, out, _) = checked(&token);
    assert!(!ok);
    assert!(out.contains("revocation  FAILED"), "{out}");

    // Not a credential at all: one clear line, non-zero.
    let (ok, _, err) = inspect(&["hello"], None);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn certificates_are_decoded_and_chained_to_the_ca() {
    use rcgen::{
        CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType, SerialNumber,
    };
    let keys = KeyDir::generate();
    TestIssuer::new().write_jwks(&keys.path("ci-jwks.json"));
    let broker = BrokerProcess::start(
        &keys,
        &(base_config(&keys, "store = \"memory\"") + &rules()),
    );
    let mint = |ca_dir: &KeyDir| {
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(ca_dir.path("ca.key")).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(
            &std::fs::read_to_string(ca_dir.path("ca.pem")).unwrap(),
            ca_key,
        )
        .unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/ns/prod/sa/web".try_into().unwrap(),
        )];
        params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0xAB, 0xCD, 0x01]));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .pem()
    };
    let pem_file = keys.path("svid.pem");
    std::fs::write(&pem_file, mint(&keys)).unwrap();
    let arg = format!("@{}", pem_file.display());
    let (ok, out, err) = inspect(&[&arg], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("identity   spiffe://example.org/ns/prod/sa/web"),
        "{out}"
    );
    assert!(out.contains("serial     abcd01"), "{out}");

    let url = broker.url("");
    let ca = keys.path("ca.pem");
    let (ok, out, err) = inspect(
        &[&arg, "--broker", &url, "--ca-file", ca.to_str().unwrap()],
        None,
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("chain       ok"), "{out}");

    // Signed by another CA: the chain check fails.
    let other = KeyDir::generate();
    std::fs::write(&pem_file, mint(&other)).unwrap();
    let (ok, out, _) = inspect(
        &[&arg, "--broker", &url, "--ca-file", ca.to_str().unwrap()],
        None,
    );
    assert!(!ok);
    assert!(out.contains("chain       FAILED"), "{out}");
}
