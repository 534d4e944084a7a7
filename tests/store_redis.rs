//! The store's contract, run against a real `redis-server` and against the memory store
//! with the same test bodies; plus what only Redis can show (TTLs, restarts).

#[path = "support/redis.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use credbroker::config::{RevocationConfig, StoreKind};
use credbroker::governance::{
    AuditEvent, AuditEventKind, IssuanceRecord, MAX_SVID_NOTES, SvidNote,
};
use credbroker::revoke::{
    CredentialRef, EntryKind, NEVER, RevocationEntry, RevocationMirror, Revoked, run_mirror_sync,
};
use credbroker::store::{JoinTokenRecord, Store, StoreError, StreamRead};
use redis_support::RedisServer;
use tokio::sync::watch;

/// Upper bound for anything that "arrives": generous, never a timing assertion.
const ARRIVAL: Duration = Duration::from_secs(15);

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn config(store: StoreKind, url: Option<&str>, stream: usize, audit: usize) -> RevocationConfig {
    RevocationConfig {
        store,
        redis_url: url.map(str::to_string),
        stream_max_len: stream,
        audit_max_len: audit,
        ..RevocationConfig::default()
    }
}

/// Two handles on one store: for Redis two separate connections, for memory two clones.
struct Pair {
    store: Store,
    other: Store,
    _server: Option<RedisServer>,
}

async fn memory(stream: usize, audit: usize) -> Pair {
    let store = Store::connect(&config(StoreKind::Memory, None, stream, audit))
        .await
        .unwrap();
    Pair {
        other: store.clone(),
        store,
        _server: None,
    }
}

async fn redis(stream: usize, audit: usize) -> Pair {
    let server = RedisServer::start();
    let cfg = config(StoreKind::Redis, Some(&server.url), stream, audit);
    Pair {
        store: Store::connect(&cfg).await.unwrap(),
        other: Store::connect(&cfg).await.unwrap(),
        _server: Some(server),
    }
}

/// Runs one async test body against both stores.
macro_rules! both {
    ($name:ident, $stream:expr, $audit:expr) => {
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name(super::memory($stream, $audit).await).await;
            }
            #[tokio::test]
            async fn redis() {
                super::$name(super::redis($stream, $audit).await).await;
            }
        }
    };
}

fn spiffe(value: &str, issued_before: i64, expires_at: i64) -> RevocationEntry {
    RevocationEntry {
        kind: EntryKind::SpiffeId,
        value: value.into(),
        issued_before: Some(issued_before),
        expires_at,
        reason: Some("test".into()),
    }
}

fn lock(value: &str, expires_at: i64) -> RevocationEntry {
    RevocationEntry {
        kind: EntryKind::Lock,
        value: value.into(),
        issued_before: None,
        expires_at,
        reason: None,
    }
}

fn entries(read: StreamRead) -> Vec<(String, RevocationEntry)> {
    match read {
        StreamRead::Entries(e) => e,
        StreamRead::Trimmed => panic!("unexpected Trimmed"),
    }
}

fn sorted(mut v: Vec<RevocationEntry>) -> Vec<RevocationEntry> {
    v.sort_by(|a, b| (a.kind, &a.value).cmp(&(b.kind, &b.value)));
    v
}

both!(publish_load_and_follow, 1000, 100);
async fn publish_load_and_follow(p: Pair) {
    let t = now();
    let a = RevocationEntry::credential("01:AB:CD", t + 600, Some("leaked".into()));
    let c1 = p.store.publish_revocation(&a).await.unwrap();
    assert_eq!(a.value, "1abcd");

    let (loaded, cursor) = p.other.load_revocations().await.unwrap();
    assert_eq!(loaded, vec![a.clone()]);
    assert_eq!(cursor, c1);

    let b = spiffe("spiffe://example.org/b", t, t + 600);
    let c2 = p.store.publish_revocation(&b).await.unwrap();
    // Resume after the first event: only the second.
    let after_c1 = entries(
        p.other
            .read_revocations_after(&c1, Duration::ZERO)
            .await
            .unwrap(),
    );
    assert_eq!(after_c1, vec![(c2.clone(), b.clone())]);
    // From the beginning: both, in order.
    let all = entries(
        p.other
            .read_revocations_after("0-0", Duration::from_millis(50))
            .await
            .unwrap(),
    );
    assert_eq!(all, vec![(c1, a.clone()), (c2.clone(), b.clone())]);
    // Nothing after the last one.
    let none = p
        .other
        .read_revocations_after(&c2, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(none, StreamRead::Entries(vec![]));

    // A blocked reader wakes up for an event written by another handle.
    let reader = {
        let other = p.other.clone();
        let c2 = c2.clone();
        tokio::spawn(async move { other.read_revocations_after(&c2, ARRIVAL).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = lock("spiffe://example.org/c", NEVER);
    let c3 = p.store.publish_revocation(&c).await.unwrap();
    let woke = entries(reader.await.unwrap().unwrap());
    assert_eq!(woke, vec![(c3, c.clone())]);

    let (loaded, _) = p.other.load_revocations().await.unwrap();
    assert_eq!(loaded.len(), 3);

    assert!(matches!(
        p.store
            .read_revocations_after("not-a-cursor", Duration::ZERO)
            .await,
        Err(StoreError::InvalidCursor(_))
    ));
}

both!(trimmed_stream_is_reported, 10, 100);
async fn trimmed_stream_is_reported(p: Pair) {
    let t = now();
    let first = p
        .store
        .publish_revocation(&RevocationEntry::credential("first", t + 600, None))
        .await
        .unwrap();
    for i in 0..500 {
        p.store
            .publish_revocation(&RevocationEntry::credential(
                &format!("id{i}"),
                t + 600,
                None,
            ))
            .await
            .unwrap();
    }
    let read = p
        .other
        .read_revocations_after(&first, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(read, StreamRead::Trimmed);

    // A full load gives every entry and a cursor that is good to follow.
    let (loaded, cursor) = p.other.load_revocations().await.unwrap();
    assert_eq!(loaded.len(), 501);
    let read = p
        .other
        .read_revocations_after(&cursor, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(read, StreamRead::Entries(vec![]));
}

both!(revocations_only_grow_and_unlock_removes, 1000, 100);
async fn revocations_only_grow_and_unlock_removes(p: Pair) {
    let t = now();
    let id = "spiffe://example.org/a";
    p.store
        .publish_revocation(&spiffe(id, t, t + 600))
        .await
        .unwrap();
    // An earlier cut-off published later never un-revokes anything.
    p.store
        .publish_revocation(&spiffe(id, t - 100, t + 300))
        .await
        .unwrap();
    p.store.publish_revocation(&lock(id, NEVER)).await.unwrap();
    let (loaded, _) = p.other.load_revocations().await.unwrap();
    assert_eq!(
        sorted(loaded),
        sorted(vec![spiffe(id, t, t + 600), lock(id, NEVER)])
    );

    // Unlock: an expired lock entry removes the lock, in the store and in a mirror.
    let cursor = p.store.publish_revocation(&lock(id, t - 1)).await.unwrap();
    let (loaded, _) = p.other.load_revocations().await.unwrap();
    assert_eq!(loaded, vec![spiffe(id, t, t + 600)]);

    let mirror = RevocationMirror::new();
    for (c, e) in entries(
        p.other
            .read_revocations_after("0-0", Duration::ZERO)
            .await
            .unwrap(),
    ) {
        mirror.apply(e, Some(&c));
    }
    assert_eq!(mirror.cursor(), Some(cursor));
    assert_eq!(mirror.lock_of(id, t), None);
    let cred = CredentialRef {
        id: "x",
        spiffe_id: id,
        source: "s",
        issued_at: t,
        chain: &[],
        actors: &[],
    };
    assert_eq!(mirror.check(&cred, t), Some(Revoked::SpiffeId));
}

both!(join_token_is_consumed_exactly_once, 1000, 100);
async fn join_token_is_consumed_exactly_once(p: Pair) {
    let t = now();
    let rec = JoinTokenRecord {
        spiffe_id: "spiffe://example.org/node".into(),
        created_at: t,
        expires_at: t + 600,
    };
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    p.store
        .put_join_token(hash, &rec, Duration::from_secs(600))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 {
            p.store.clone()
        } else {
            p.other.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.take_join_token(hash).await.unwrap()
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(r) = task.await.unwrap() {
            winners.push(r);
        }
    }
    assert_eq!(winners, vec![rec]);
    assert_eq!(p.store.take_join_token(hash).await.unwrap(), None);
    assert_eq!(p.store.take_join_token("unknown").await.unwrap(), None);
}

both!(one_time_keys_are_remembered, 1000, 100);
async fn one_time_keys_are_remembered(p: Pair) {
    let exp = now() + 300;
    assert!(p.store.remember_once("github:jti-1", exp).await.unwrap());
    assert!(!p.other.remember_once("github:jti-1", exp).await.unwrap());
    assert!(!p.store.remember_once("github:jti-1", exp).await.unwrap());
    assert!(p.store.remember_once("github:jti-2", exp).await.unwrap());
    // Already past its expiry: still remembered for a while, so no replay within leeway.
    assert!(
        p.store
            .remember_once("github:old", now() - 5)
            .await
            .unwrap()
    );
    assert!(
        !p.store
            .remember_once("github:old", now() - 5)
            .await
            .unwrap()
    );
}

both!(rate_bucket_bursts_then_refuses, 1000, 100);
async fn rate_bucket_bursts_then_refuses(p: Pair) {
    let t = now() * 1000;
    let period = Duration::from_secs(60);
    for _ in 0..3 {
        assert_eq!(
            p.store
                .take_rate_token("rule:a", 3, period, t)
                .await
                .unwrap(),
            Ok(())
        );
    }
    let refused = p
        .other
        .take_rate_token("rule:a", 3, period, t)
        .await
        .unwrap();
    let retry_after = refused.expect_err("the bucket should be empty");
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(20));
    // Another key has its own bucket.
    assert_eq!(
        p.store
            .take_rate_token("rule:b", 3, period, t)
            .await
            .unwrap(),
        Ok(())
    );
    // A third of the period refills one token (times are given, not waited for).
    let later = t + 20_000;
    assert_eq!(
        p.store
            .take_rate_token("rule:a", 3, period, later)
            .await
            .unwrap(),
        Ok(())
    );
    assert!(
        p.store
            .take_rate_token("rule:a", 3, period, later)
            .await
            .unwrap()
            .is_err()
    );
}

fn issuance(id: &str, owner: &str, at: i64, exp: i64, n: usize) -> IssuanceRecord {
    let mut event = AuditEvent::new(AuditEventKind::Issued, at);
    event.identity = Some(id.into());
    event.owner = Some(owner.into());
    event.credential_id = Some(format!("cred{n}"));
    IssuanceRecord {
        spiffe_id: id.into(),
        owner: owner.into(),
        rule: "rule-a".into(),
        attestor: "k8s".into(),
        issued_at: at,
        expires_at: exp,
        event,
        svid: None,
    }
}

both!(inventory_is_per_identity, 1000, 1000);
async fn inventory_is_per_identity(p: Pair) {
    let t = now();
    let a = "spiffe://example.org/ns/prod/sa/a";
    for i in 0..100 {
        let at = t + i as i64;
        // Expiries are not monotonic: the latest expiry is still the maximum.
        let exp = if i == 50 { t + 10_000 } else { at + 300 };
        p.store
            .record_issuance(&issuance(a, "team-a", at, exp, i))
            .await
            .unwrap();
    }
    p.other
        .record_issuance(&issuance("spiffe://example.org/b", "team-b", t, t + 60, 0))
        .await
        .unwrap();

    let all = p.other.list_identities(None).await.unwrap();
    assert_eq!(all.len(), 2);
    let rec = &all[1];
    assert_eq!(rec.spiffe_id, a);
    assert_eq!(rec.credentials_issued, 100);
    assert_eq!(rec.first_seen, t);
    assert_eq!(rec.last_issued, t + 99);
    assert_eq!(rec.latest_expiry, t + 10_000);
    assert_eq!(
        (rec.owner.as_str(), rec.rule.as_str(), rec.attestor.as_str()),
        ("team-a", "rule-a", "k8s")
    );
    assert!(!rec.locked);

    let team_b = p.store.list_identities(Some("team-b")).await.unwrap();
    assert_eq!(team_b.len(), 1);
    assert_eq!(team_b[0].spiffe_id, "spiffe://example.org/b");
    assert!(
        p.store
            .list_identities(Some("nobody"))
            .await
            .unwrap()
            .is_empty()
    );

    // Each issuance also wrote its audit event.
    let audit = p.store.recent_audit(1000).await.unwrap();
    assert_eq!(audit.len(), 101);
    assert_eq!(audit[0].credential_id.as_deref(), Some("cred0"));
}

both!(concurrent_issuances_all_land, 1000, 1000);
/// Concurrent writes each land once. On Redis they are group-committed into shared
/// pipelines, where one identity's records in a batch update its inventory record
/// together: the count and the latest expiry must come out as one after another would.
async fn concurrent_issuances_all_land(p: Pair) {
    let t = now();
    let busy = "spiffe://example.org/ns/prod/sa/busy";
    let other = "spiffe://example.org/ns/prod/sa/other";
    // Issued in the same second, expiries out of order.
    let records: Vec<IssuanceRecord> = (0..200)
        .map(|i| {
            let (id, owner) = if i % 3 == 0 {
                (other, "team-b")
            } else {
                (busy, "team-a")
            };
            issuance(id, owner, t, t + 300 + (i as i64 * 37) % 101, i)
        })
        .collect();
    let results =
        futures_util::future::join_all(records.iter().map(|r| p.store.record_issuance(r))).await;
    assert!(results.iter().all(Result::is_ok));
    let all = p.other.list_identities(None).await.unwrap();
    let got: Vec<_> = all
        .iter()
        .map(|r| {
            let mine = records.iter().filter(|x| x.spiffe_id == r.spiffe_id);
            let expected = (
                mine.clone().count() as u64,
                mine.clone().map(|x| x.issued_at).min().unwrap(),
                mine.clone().map(|x| x.issued_at).max().unwrap(),
                mine.map(|x| x.expires_at).max().unwrap(),
            );
            let read = (
                r.credentials_issued,
                r.first_seen,
                r.last_issued,
                r.latest_expiry,
            );
            (r.spiffe_id.as_str(), r.owner.as_str(), read, expected)
        })
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    for (id, owner, read, expected) in got {
        assert_eq!(read, expected, "{id}");
        assert_eq!(owner, if id == busy { "team-a" } else { "team-b" });
    }
    let mut ids: Vec<String> = p
        .store
        .recent_audit(1000)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.credential_id)
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..200).map(|n| format!("cred{n}")).collect();
    expected.sort();
    assert_eq!(ids, expected);

    // A new identity's first two records, together: first seen is the earlier one, last
    // issued the later one's.
    let new = "spiffe://example.org/ns/prod/sa/new";
    let (first, second) = (
        issuance(new, "team-c", t, t + 60, 200),
        issuance(new, "team-c", t + 3, t + 60, 201),
    );
    let (a, b) = tokio::join!(
        p.store.record_issuance(&first),
        p.store.record_issuance(&second)
    );
    a.and(b).expect("both written");
    let all = p.other.list_identities(Some("team-c")).await.unwrap();
    assert_eq!(
        (
            all[0].credentials_issued,
            all[0].first_seen,
            all[0].last_issued
        ),
        (2, t, t + 3)
    );
}

both!(audit_stream_is_bounded, 1000, 20);
async fn audit_stream_is_bounded(p: Pair) {
    let t = now();
    for i in 0..1000 {
        let mut ev = AuditEvent::new(
            if i % 2 == 0 {
                AuditEventKind::Denied
            } else {
                AuditEventKind::Revoked
            },
            t,
        );
        ev.credential_id = Some(i.to_string());
        ev.reason = Some("no rule matched".into());
        p.store.append_audit(&ev).await.unwrap();
    }
    let kept = p.other.recent_audit(10_000).await.unwrap();
    // Redis trims whole stream nodes (`MAXLEN ~`), so a little more than 20 may remain.
    assert!(kept.len() >= 20 && kept.len() <= 250, "kept {}", kept.len());
    let last = p.other.recent_audit(3).await.unwrap();
    let ids: Vec<_> = last
        .iter()
        .map(|e| e.credential_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["997", "998", "999"]);
    assert_eq!(last[0].event, AuditEventKind::Revoked);
    assert!(p.store.recent_audit(0).await.unwrap().is_empty());
    p.store.ping().await.unwrap();
}

async fn wait_for(
    mirror: &RevocationMirror,
    what: &str,
    mut cond: impl FnMut(&RevocationMirror) -> bool,
) {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while !cond(mirror) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never reached the mirror"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn has(mirror: &RevocationMirror, value: &str) -> bool {
    mirror.live_entries(now()).iter().any(|e| e.value == value)
}

both!(mirror_sync_picks_up_other_writers, 1000, 100);
async fn mirror_sync_picks_up_other_writers(p: Pair) {
    let t = now();
    // Written before the mirror starts: arrives by the full load.
    p.other
        .publish_revocation(&RevocationEntry::credential("before", t + 600, None))
        .await
        .unwrap();
    let mirror = Arc::new(RevocationMirror::new());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run_mirror_sync(p.store.clone(), mirror.clone(), stopped));
    wait_for(&mirror, "the loaded entry", |m| has(m, "before")).await;

    // Written by another instance afterwards: arrives by the stream.
    p.other
        .publish_revocation(&RevocationEntry::credential("after", t + 600, None))
        .await
        .unwrap();
    wait_for(&mirror, "the streamed entry", |m| has(m, "after")).await;
    assert!(mirror.last_synced_ms().is_some());

    stop.send(true).unwrap();
    tokio::time::timeout(ARRIVAL, task).await.unwrap().unwrap();
}

/// A connection of the test's own to the pair's `redis-server`, beside the store's.
async fn raw_connection(p: &Pair) -> redis::aio::MultiplexedConnection {
    let server = p._server.as_ref().expect("a Redis pair");
    redis::Client::open(server.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A record Redis refuses fails its own write, and only its own: the replies of a
/// group-committed batch are checked and charged to the request they belong to.
#[tokio::test]
async fn redis_refusing_a_record_fails_the_write() {
    let p = redis(1000, 100).await;
    let mut raw = raw_connection(&p).await;
    let t = now();
    let id = "spiffe://example.org/ns/prod/sa/refused";
    // The identity's inventory key is made a string: HSET/HINCRBY on it are refused.
    let key = format!("credbroker:inv:{id}");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a hash")
        .query_async(&mut raw)
        .await
        .unwrap();
    // Issued together, so that both records go out in one pipeline.
    let refused = issuance(id, "team-a", t, t + 60, 1);
    let fine = issuance("spiffe://example.org/fine", "team-a", t, t + 60, 2);
    let (refused, fine) = tokio::join!(
        p.store.record_issuance(&refused),
        p.store.record_issuance(&fine)
    );
    let err = refused.expect_err("a refused record must fail the issuance's write");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    fine.expect("another identity's record is written");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    for (at, n) in [(t + 5, 3), (t + 9, 4)] {
        p.store
            .record_issuance(&issuance(id, "team-a", at, t + 60, n))
            .await
            .expect("written once the key is a hash again");
    }
    let all = p.other.list_identities(None).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/fine", id]);
    // The record begins again: first seen at its first issuance, not its last.
    let again = &all[1];
    assert_eq!(
        (
            again.credentials_issued,
            again.first_seen,
            again.last_issued
        ),
        (2, t + 5, t + 9)
    );

    // A record whose first_seen has not landed (yet) reads its last issuance in its place.
    let _: () = redis::cmd("HDEL")
        .arg(&key)
        .arg("first_seen")
        .query_async(&mut raw)
        .await
        .unwrap();
    let all = p.other.list_identities(None).await.unwrap();
    assert_eq!((all[1].first_seen, all[1].last_issued), (t + 9, t + 9));
    let audited: Vec<String> = p
        .store
        .recent_audit(10)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.credential_id)
        .collect();
    // (A pipeline is not a transaction: the refused record's own audit event, cred1, went
    // in before its request failed, as any write may land before its reply is lost.)
    assert!(
        ["cred2", "cred3", "cred4"]
            .iter()
            .all(|c| audited.contains(&c.to_string())),
        "the refused record's batch mate and the later records are audited: {audited:?}"
    );
}

#[tokio::test]
async fn redis_entry_keys_carry_ttls() {
    let p = redis(1000, 100).await;
    let mut raw = raw_connection(&p).await;
    let t = now();
    p.store
        .publish_revocation(&RevocationEntry::credential("abc", t + 100, None))
        .await
        .unwrap();
    p.store
        .publish_revocation(&lock("spiffe://example.org/a", NEVER))
        .await
        .unwrap();
    p.store
        .publish_revocation(&lock("spiffe://example.org/b", t + 50))
        .await
        .unwrap();
    let ttl = |key: &'static str| {
        let mut raw = raw.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut raw)
                .await
                .unwrap()
        }
    };
    let cred = ttl("credbroker:{rev}:e:credential:abc").await;
    assert!((1..=100).contains(&cred), "credential TTL {cred}");
    assert_eq!(
        ttl("credbroker:{rev}:e:lock:spiffe://example.org/a").await,
        -1
    );
    let b = ttl("credbroker:{rev}:e:lock:spiffe://example.org/b").await;
    assert!((1..=50).contains(&b), "lock TTL {b}");
    // Unlocking deletes the key.
    p.store
        .publish_revocation(&lock("spiffe://example.org/a", t - 1))
        .await
        .unwrap();
    assert_eq!(
        ttl("credbroker:{rev}:e:lock:spiffe://example.org/a").await,
        -2
    );
    // The stream is capped and the join-token, replay and rate keys expire too.
    p.store.remember_once("k", t + 300).await.unwrap();
    assert!(ttl("credbroker:once:k").await > 0);
    p.store
        .take_rate_token("r", 5, Duration::from_secs(60), t * 1000)
        .await
        .unwrap()
        .unwrap();
    assert!(ttl("credbroker:rate:r").await > 0);
    // The shared CRL set lives as long as its latest serial.
    p.store
        .add_crl_serials(&[("0a".into(), t + 100)])
        .await
        .unwrap();
    p.store
        .add_crl_serials(&[("0b".into(), t + 200), ("0c".into(), t + 10)])
        .await
        .unwrap();
    let crl = ttl("credbroker:crl:serials").await;
    assert!((101..=200).contains(&crl), "CRL set TTL {crl}");
    let len: i64 = redis::cmd("XLEN")
        .arg("credbroker:{rev}:stream")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(len, 4);
}

#[tokio::test]
async fn redis_mirror_survives_a_restart() {
    let mut server = RedisServer::start();
    let cfg = config(StoreKind::Redis, Some(&server.url), 1000, 100);
    let store = Store::connect(&cfg).await.unwrap();
    let writer = Store::connect(&cfg).await.unwrap();
    let t = now();

    let mirror = Arc::new(RevocationMirror::new());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run_mirror_sync(store.clone(), mirror.clone(), stopped));
    writer
        .publish_revocation(&RevocationEntry::credential("before-outage", t + 600, None))
        .await
        .unwrap();
    wait_for(&mirror, "the first entry", |m| has(m, "before-outage")).await;

    server.stop();
    assert!(writer.ping().await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();

    // The writer's connection comes back by itself; retry until it has.
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    let entry = RevocationEntry::credential("after-outage", t + 600, None);
    while writer.publish_revocation(&entry).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writer never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(&mirror, "the entry written after the restart", |m| {
        has(m, "after-outage")
    })
    .await;
    assert!(has(&mirror, "before-outage"));

    stop.send(true).unwrap();
    tokio::time::timeout(ARRIVAL, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn redis_mirror_follows_a_redis_that_lost_its_data() {
    let mut server = RedisServer::start();
    let cfg = config(StoreKind::Redis, Some(&server.url), 1000, 100);
    let store = Store::connect(&cfg).await.unwrap();
    let writer = Store::connect(&cfg).await.unwrap();
    let t = now();

    let mirror = Arc::new(RevocationMirror::new());
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run_mirror_sync(store.clone(), mirror.clone(), stopped));
    writer
        .publish_revocation(&RevocationEntry::credential("lost", t + 600, None))
        .await
        .unwrap();
    wait_for(&mirror, "the first entry", |m| has(m, "lost")).await;

    // Without persistence a crash loses every entry: the stream restarts, the mirror
    // notices, reloads, and from then on agrees with Redis (as a newly started broker would).
    server.crash();
    server.restart();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    let entry = RevocationEntry::credential("new", t + 600, None);
    while writer.publish_revocation(&entry).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writer never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(&mirror, "the entry written after the crash", |m| {
        has(m, "new")
    })
    .await;
    wait_for(&mirror, "the reload", |m| !has(m, "lost")).await;

    stop.send(true).unwrap();
    tokio::time::timeout(ARRIVAL, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error_without_the_password() {
    let server = RedisServer::start();
    let port = server.port;
    drop(server);
    let url = format!("redis://:hunter2@127.0.0.1:{port}/0");
    let err = Store::connect(&config(StoreKind::Redis, Some(&url), 10, 10))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(err.is_unavailable(), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
}

#[tokio::test]
async fn malformed_redis_url_is_a_config_error_without_the_password() {
    for url in [
        "redis://:hunter2@127.0.0.1:notaport/0",
        "http://:hunter2@127.0.0.1:6379/0",
    ] {
        let err = Store::connect(&config(StoreKind::Redis, Some(url), 10, 10))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(!err.is_unavailable(), "{text}");
        assert!(text.contains("invalid redis URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}

both!(crl_serials_are_shared_until_they_expire, 1000, 100);
async fn crl_serials_are_shared_until_they_expire(p: Pair) {
    let t = now();
    assert!(p.other.crl_serials(t).await.unwrap().is_empty());
    let add = |list: &[(&str, i64)]| -> Vec<(String, i64)> {
        list.iter().map(|(s, e)| (s.to_string(), *e)).collect()
    };
    p.store
        .add_crl_serials(&add(&[("0b", t + 100), ("0a", t + 100), ("0c", t + 5)]))
        .await
        .unwrap();
    // Added again by another broker: the later expiry wins, either way round.
    p.other
        .add_crl_serials(&add(&[("0c", t + 200), ("0a", t + 1)]))
        .await
        .unwrap();
    assert_eq!(p.other.crl_serials(t).await.unwrap(), ["0a", "0b", "0c"]);
    assert_eq!(
        p.store.crl_serials(t + 50).await.unwrap(),
        ["0a", "0b", "0c"]
    );
    assert_eq!(p.store.crl_serials(t + 100).await.unwrap(), ["0c"]);
    assert!(p.other.crl_serials(t + 200).await.unwrap().is_empty());
}

#[tokio::test]
async fn svid_notes_are_kept_for_later_brokers_until_they_expire() {
    let p = redis(10, 10).await;
    let t = now();
    let note = |serial: &str, expires_at: i64| SvidNote {
        serial: serial.into(),
        spiffe_id: format!("spiffe://example.org/host/{serial}"),
        src: "bootstrap".into(),
        issued_at: t,
        expires_at,
        chain: vec!["parent-credential".into()],
    };
    let issued = |note: &SvidNote, at: i64| IssuanceRecord {
        svid: Some(note.clone()),
        ..issuance(&note.spiffe_id, "team-x", at, note.expires_at, 0)
    };
    // Issued together: one batch, one ZADD.
    let (a, b, c) = (
        note("0a", t + 100),
        note("0b", t + 300),
        note("0c", t + 200),
    );
    let (ra, rb, rc) = (issued(&a, t), issued(&b, t), issued(&c, t));
    let (x, y, z) = tokio::join!(
        p.store.record_issuance(&ra),
        p.store.record_issuance(&rb),
        p.store.record_issuance(&rc),
    );
    x.and(y).and(z).unwrap();
    // Read through another connection, as a broker started later does: the latest to
    // expire first, at most `limit`, none expired.
    let all = [b.clone(), c, a];
    assert_eq!(p.other.svid_notes(t, 10).await.unwrap(), all);
    assert_eq!(p.other.svid_notes(t, 2).await.unwrap(), all[..2]);
    assert_eq!(p.other.svid_notes(t + 200, 10).await.unwrap(), all[..1]);

    // A note added later drops those expired by then; a member that is not a note is
    // skipped, not an error; a JWT's record adds none.
    let mut raw = raw_connection(&p).await;
    let key = "credbroker:crl:svids";
    let _: () = redis::cmd("ZADD")
        .arg(key)
        .arg(t + 500)
        .arg("not a note")
        .query_async(&mut raw)
        .await
        .unwrap();
    let d = note("0d", t + 400);
    p.store.record_issuance(&issued(&d, t + 250)).await.unwrap();
    let jwt = issuance("spiffe://example.org/jwt", "team-x", t + 250, t + 900, 1);
    p.store.record_issuance(&jwt).await.unwrap();
    let held: usize = redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(held, 3, "0b, 0d and the stranger");
    assert_eq!(
        p.other.svid_notes(t + 250, 10).await.unwrap(),
        [d.clone(), b]
    );
    // Past the cap, the earliest to expire go (no broker would read them).
    let mut fill = redis::cmd("ZADD");
    fill.arg(key);
    for i in 0..MAX_SVID_NOTES as i64 {
        fill.arg(t + 1_000 + i).arg(format!("filler-{i}"));
    }
    let _: () = fill.query_async(&mut raw).await.unwrap();
    let e = note("0e", t + 1_000_000);
    p.store.record_issuance(&issued(&e, t + 250)).await.unwrap();
    let (held, lowest): (usize, Vec<String>) = redis::pipe()
        .cmd("ZCARD")
        .arg(key)
        .cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(0)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(held, MAX_SVID_NOTES);
    assert_eq!(
        lowest,
        ["filler-1"],
        "0b, 0d, the stranger and filler-0 went"
    );
    assert_eq!(p.other.svid_notes(t + 250, 1).await.unwrap(), [e]);
    // The memory store ends with its broker: nothing to keep for a later one.
    let memory = memory(10, 10).await;
    memory.store.record_issuance(&issued(&d, t)).await.unwrap();
    assert!(memory.other.svid_notes(t, 10).await.unwrap().is_empty());
}
