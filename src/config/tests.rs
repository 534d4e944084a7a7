use super::*;

const MINIMAL: &str = r#"
trust_domain = "example.org"
issuer = "https://broker.example.org:8443"
[server]
listen_http = "127.0.0.1:8080"
[jwt]
signing_keys = ["jwt.key"]
[revocation]
store = "memory"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/credbroker/broker.toml"))
}

#[test]
fn minimal_config_gets_defaults_and_resolves_paths() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.jwt.default_ttl.0, Duration::from_secs(300));
    assert_eq!(
        c.jwt.signing_keys[0],
        PathBuf::from("/etc/credbroker/jwt.key")
    );
    assert_eq!(c.server.max_body.0, 65536);
    assert_eq!(c.revocation.max_staleness.0, Duration::from_secs(5));
}

#[test]
fn rule_without_owner_is_an_error_naming_the_rule_and_key() {
    let text = format!(
        "{MINIMAL}\n[[attestor]]\nname = \"j\"\nkind = \"join_token\"\n[[rule]]\nname = \"r1\"\nattestor = \"j\"\nspiffe_id = \"spiffe://example.org/x\"\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("broker.toml"), "{err}");
    assert!(err.contains("rule #1"), "{err}");
    assert!(err.contains("owner"), "{err}");
}

#[test]
fn unknown_keys_and_bad_durations_are_errors_with_the_file_name() {
    let err = parse(&MINIMAL.replace("[jwt]", "[jwt]\nmax_tll = \"1h\""))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_tll") && err.contains("broker.toml"),
        "{err}"
    );
    let err = parse(&MINIMAL.replace("[jwt]", "[jwt]\ndefault_ttl = \"5 minutes\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn ttls_over_the_limits_are_refused() {
    let err = parse(&MINIMAL.replace("[jwt]", "[jwt]\nmax_ttl = \"25h\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[jwt] max_ttl"), "{err}");
}

#[test]
fn attestor_algorithms_never_include_none_or_hmac() {
    let text = format!(
        "{MINIMAL}\n[[attestor]]\nname = \"gh\"\nkind = \"jwt\"\nissuer = \"https://x\"\njwks_file = \"j.json\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("algorithms") && err.contains("HS256"), "{err}");
}
