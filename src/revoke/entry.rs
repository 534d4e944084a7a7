//! Revocation entries: what can be revoked, and the feed's JSON form (SPEC §6.4, §7).

use std::fmt;

use serde::{Deserialize, Serialize};

/// `expires_at` of an entry that never expires (a lock without TTL).
///
/// In JSON it is written as the largest RFC 3339 time, `9999-12-31T23:59:59Z`, and any time
/// at or past that one reads back as `NEVER`; in Redis the entry's key gets no TTL.
pub const NEVER: i64 = i64::MAX;

/// What an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// One credential: a JWT `jti` or a certificate serial.
    Credential,
    /// Everything issued to a SPIFFE ID at or before `issued_before`.
    SpiffeId,
    /// Everything obtained through one attestation source (`src`) at or before `issued_before`.
    Source,
    /// A SPIFFE ID may get nothing new; revokes nothing by itself.
    Lock,
    /// Everything issued at or before `issued_before` (key compromise).
    All,
}

impl EntryKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EntryKind; 5] = [
        EntryKind::Credential,
        EntryKind::SpiffeId,
        EntryKind::Source,
        EntryKind::Lock,
        EntryKind::All,
    ];

    /// The name used in JSON and in store keys.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Credential => "credential",
            EntryKind::SpiffeId => "spiffe_id",
            EntryKind::Source => "source",
            EntryKind::Lock => "lock",
            EntryKind::All => "all",
        }
    }

    /// The kind named `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One revocation (or lock) as it travels through the feed and the store.
///
/// An entry whose `expires_at` has passed covers nothing; for a lock, publishing such an
/// entry is how an unlock travels. Times are Unix seconds; JSON carries RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEntry {
    pub kind: EntryKind,
    /// The credential id (normal form, see [`normalize_credential_id`]); the SPIFFE ID for
    /// `spiffe_id` and `lock`; the `src` hash for `source`; `""` for `all`.
    pub value: String,
    /// Covers credentials issued at or before this time. `None` for `credential` and `lock`;
    /// for the other kinds `None` means "issued at any time".
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub issued_before: Option<i64>,
    /// When the entry stops mattering: the latest expiry of anything it can cover (+ leeway),
    /// or [`NEVER`].
    #[serde(with = "rfc3339")]
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RevocationEntry {
    /// An entry for one credential; the id is brought to its normal form.
    pub fn credential(id: &str, expires_at: i64, reason: Option<String>) -> Self {
        Self {
            kind: EntryKind::Credential,
            value: normalize_credential_id(id),
            issued_before: None,
            expires_at,
            reason,
        }
    }

    /// Whether the entry still covers anything at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.expires_at > now
    }

    /// The entry with its value in normal form (credential ids; other kinds unchanged).
    pub fn normalized(mut self) -> Self {
        if self.kind == EntryKind::Credential
            && let Some(normal) = renormalized(&self.value)
        {
            self.value = normal;
        }
        if self.kind == EntryKind::All {
            self.value.clear();
        }
        self
    }

    /// Combines a newer entry for the same kind and value with what is already known.
    ///
    /// A lock is simply replaced (that is how an unlock or a new TTL travels). Revocations
    /// only ever grow: the later `issued_before` and the later `expires_at` win, so a second
    /// revocation with an earlier cut-off can never un-revoke anything. The Redis script
    /// applies the same rule, so a mirror and the store agree whatever order they see.
    pub fn merged_with(self, newer: RevocationEntry) -> RevocationEntry {
        debug_assert_eq!(self.kind, newer.kind);
        if newer.kind == EntryKind::Lock {
            return newer;
        }
        let issued_before = match (self.issued_before, newer.issued_before) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let issued_before = if newer.kind == EntryKind::Credential {
            None
        } else {
            issued_before
        };
        RevocationEntry {
            kind: newer.kind,
            value: newer.value,
            issued_before,
            expires_at: self.expires_at.max(newer.expires_at),
            reason: newer.reason.or(self.reason),
        }
    }
}

/// Brings a credential id to its normal form.
///
/// A certificate's id is its serial as lowercase hex without separators or leading zeros
/// (SPEC §5.2), and anything that takes a serial also accepts upper case and colon-separated
/// bytes (`01:AB:…`, as `openssl` prints them). So: a string with `:` whose other characters
/// are hex digits, or a string of hex digits only, is a serial and is lowercased with colons
/// and leading zeros removed (`"0"` stays `"0"`). Anything else (a JWT `jti`) is kept as is.
///
/// The `jti`s the broker mints are 22-character base64url strings; one made only of hex
/// digits is possible but has a probability of about 10⁻¹⁰, and since the same function runs
/// when an entry is written and when a credential is checked, even such a `jti` stays
/// consistently revocable.
pub fn normalize_credential_id(id: &str) -> String {
    renormalized(id).unwrap_or_else(|| id.to_string())
}

/// The normal form of `id` when it differs from `id`.
fn renormalized(id: &str) -> Option<String> {
    if !is_serial_form(id) || is_normal_serial(id) {
        return None;
    }
    let hex: String = id
        .bytes()
        .filter(|&b| b != b':')
        .map(|b| b.to_ascii_lowercase() as char)
        .collect();
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    })
}

/// Ids longer than this are normalised on the heap; the mirror's check stays allocation-free
/// for every id the broker mints (a serial is ≤ 20 bytes, 59 characters with colons).
pub(crate) const NORMALIZE_BUF: usize = 128;

/// Normalises into `buf` without allocating; `None` when `id` is too long for the buffer.
/// Returns `id` itself when it is already in normal form.
pub(crate) fn normalize_into<'a>(id: &'a str, buf: &'a mut [u8; NORMALIZE_BUF]) -> Option<&'a str> {
    if !is_serial_form(id) || is_normal_serial(id) {
        return Some(id);
    }
    let mut len = 0;
    for b in id.bytes().filter(|&b| b != b':') {
        if len == 0 && b == b'0' {
            continue;
        }
        if len == NORMALIZE_BUF {
            return None;
        }
        buf[len] = b.to_ascii_lowercase();
        len += 1;
    }
    if len == 0 {
        buf[0] = b'0';
        len = 1;
    }
    // Only ASCII hex digits were copied.
    std::str::from_utf8(&buf[..len]).ok()
}

/// Hex digits, optionally separated by colons (at least one hex digit).
fn is_serial_form(id: &str) -> bool {
    let mut digits = 0usize;
    for b in id.bytes() {
        if b.is_ascii_hexdigit() {
            digits += 1;
        } else if b != b':' {
            return false;
        }
    }
    digits > 0
}

/// Already lowercase hex, no colons, no leading zero (or exactly `"0"`).
fn is_normal_serial(id: &str) -> bool {
    let bytes = id.as_bytes();
    (id == "0" || bytes.first() != Some(&b'0'))
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Unix seconds ↔ RFC 3339 for serde (`#[serde(with = "…")]`), UTC, whole seconds.
///
/// Times past year 9999 are written as `9999-12-31T23:59:59Z`, which reads back as
/// [`NEVER`].
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    use super::NEVER;

    /// `9999-12-31T23:59:59Z`, the latest time RFC 3339 can write.
    const MAX_UNIX: i64 = 253_402_300_799;
    /// `0000-01-01T00:00:00Z`.
    const MIN_UNIX: i64 = -62_167_219_200;

    /// Formats Unix seconds as RFC 3339 (clamped to years 0000–9999).
    pub fn format(unix: i64) -> String {
        let clamped = unix.clamp(MIN_UNIX, MAX_UNIX);
        OffsetDateTime::from_unix_timestamp(clamped)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_string())
    }

    /// Parses RFC 3339 into Unix seconds (fractions dropped); the latest writable time is [`NEVER`].
    pub fn parse(text: &str) -> Result<i64, time::error::Parse> {
        let unix = OffsetDateTime::parse(text, &Rfc3339)?.unix_timestamp();
        Ok(if unix >= MAX_UNIX { NEVER } else { unix })
    }

    pub fn serialize<S: Serializer>(unix: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*unix))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<i64>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(unix: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match unix {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => super::parse(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_the_feed_format() {
        let e = RevocationEntry {
            kind: EntryKind::SpiffeId,
            value: "spiffe://example.org/ci".into(),
            issued_before: Some(1_700_000_000),
            expires_at: 1_700_003_600,
            reason: Some("leaked".into()),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"kind": "spiffe_id", "value": "spiffe://example.org/ci",
                   "issued_before": "2023-11-14T22:13:20Z",
                   "expires_at": "2023-11-14T23:13:20Z", "reason": "leaked"})
        );
        let back: RevocationEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn optional_fields_are_omitted_and_kinds_named() {
        let e = RevocationEntry::credential("abc", 100, None);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"kind": "credential", "value": "abc", "expires_at": "1970-01-01T00:01:40Z"})
        );
        for kind in EntryKind::ALL {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(text, format!("\"{}\"", kind.as_str()));
            assert_eq!(EntryKind::parse(kind.as_str()), Some(kind));
        }
        assert!(serde_json::from_str::<EntryKind>("\"nope\"").is_err());
    }

    #[test]
    fn offsets_and_never_round_trip() {
        let e: RevocationEntry = serde_json::from_value(json!({
            "kind": "lock", "value": "spiffe://example.org/x",
            "expires_at": "9999-12-31T23:59:59Z"}))
        .unwrap();
        assert_eq!(e.expires_at, NEVER);
        assert_eq!(
            serde_json::to_value(&e).unwrap()["expires_at"],
            "9999-12-31T23:59:59Z"
        );
        let e: RevocationEntry = serde_json::from_value(json!({
            "kind": "all", "value": "", "issued_before": "2023-11-15T00:13:20+02:00",
            "expires_at": "2023-11-14T23:13:20.9Z"}))
        .unwrap();
        assert_eq!(e.issued_before, Some(1_700_000_000));
        assert_eq!(e.expires_at, 1_700_003_600);
        assert!(
            serde_json::from_value::<RevocationEntry>(json!({
                "kind": "all", "value": "", "expires_at": "yesterday"}))
            .is_err()
        );
    }

    #[test]
    fn serials_are_normalised() {
        assert_eq!(normalize_credential_id("01:AB:cd:00"), "1abcd00");
        assert_eq!(normalize_credential_id("00FF"), "ff");
        assert_eq!(normalize_credential_id("ff"), "ff");
        assert_eq!(normalize_credential_id("00:00"), "0");
        assert_eq!(normalize_credential_id("0"), "0");
        assert_eq!(
            normalize_credential_id("7A:3F:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:01"),
            "7a3f00112233445566778899aabbccddeeff0001"
        );
    }

    #[test]
    fn jtis_are_kept() {
        for jti in [
            "q3Zb-Y_7kP2mXw9aL0cVtA",
            "AbCdEfGhIjKlMnOpQrStUv",
            "",
            "a:b:zz",
        ] {
            assert_eq!(normalize_credential_id(jti), jti);
        }
    }

    #[test]
    fn normalisation_without_allocation_matches() {
        let long = "0A:".repeat(60);
        for id in [
            "01:AB",
            "abc",
            "00ff",
            "q3Zb-Y_7kP2mXw9aL0cVtA",
            long.as_str(),
        ] {
            let mut buf = [0u8; NORMALIZE_BUF];
            let fast = normalize_into(id, &mut buf).map(str::to_string);
            let expected = normalize_credential_id(id);
            if let Some(fast) = fast {
                assert_eq!(fast, expected, "{id}");
            } else {
                assert!(id.len() > NORMALIZE_BUF);
            }
        }
    }

    #[test]
    fn revocations_only_grow_and_locks_are_replaced() {
        let a = RevocationEntry {
            kind: EntryKind::SpiffeId,
            value: "spiffe://example.org/a".into(),
            issued_before: Some(200),
            expires_at: 1000,
            reason: Some("first".into()),
        };
        let earlier = RevocationEntry {
            issued_before: Some(100),
            expires_at: 900,
            reason: None,
            ..a.clone()
        };
        let m = a.clone().merged_with(earlier);
        assert_eq!(m.issued_before, Some(200));
        assert_eq!(m.expires_at, 1000);
        assert_eq!(m.reason.as_deref(), Some("first"));

        let lock = RevocationEntry {
            kind: EntryKind::Lock,
            value: "spiffe://example.org/a".into(),
            issued_before: None,
            expires_at: NEVER,
            reason: None,
        };
        let unlock = RevocationEntry {
            expires_at: 5,
            ..lock.clone()
        };
        assert_eq!(lock.merged_with(unlock.clone()), unlock);
    }
}
