//! A mirror whose stream position was trimmed away reloads in full and loses nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker::config::{RevocationConfig, StoreKind};
use credbroker::revoke::entry::RevocationEntry;
use credbroker::revoke::mirror::{CredentialRef, RevocationMirror};
use credbroker::revoke::sync::{initial_load, run_mirror_sync};
use credbroker::store::Store;

#[path = "support/redis.rs"]
mod redis_support;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn revoked(mirror: &RevocationMirror, id: &str) -> bool {
    mirror
        .check(
            &CredentialRef {
                id,
                spiffe_id: "spiffe://example.org/x",
                source: "src",
                issued_at: now(),
                chain: &[],
                actors: &[],
            },
            now(),
        )
        .is_some()
}

#[tokio::test]
async fn a_trimmed_stream_triggers_a_full_reload_and_nothing_is_lost() {
    let redis = redis_support::RedisServer::start();
    let config = RevocationConfig {
        store: StoreKind::Redis,
        redis_url: Some(redis.url.clone()),
        stream_max_len: 10,
        ..RevocationConfig::default()
    };
    let writer = Store::connect(&config).await.unwrap();
    let reader = Store::connect(&config).await.unwrap();
    writer
        .publish_revocation(&RevocationEntry::credential("before", now() + 600, None))
        .await
        .unwrap();
    let mirror = Arc::new(RevocationMirror::new());
    initial_load(&reader, &mirror).await.unwrap();
    assert!(revoked(&mirror, "before"));
    let stale_cursor = mirror.cursor().unwrap();

    // While the mirror is not following, far more entries than the stream keeps arrive.
    for i in 0..500 {
        writer
            .publish_revocation(&RevocationEntry::credential(
                &format!("during-{i}"),
                now() + 600,
                None,
            ))
            .await
            .unwrap();
    }
    assert_eq!(mirror.cursor().unwrap(), stale_cursor);

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_mirror_sync(reader.clone(), mirror.clone(), stop_rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !(0..500).all(|i| revoked(&mirror, &format!("during-{i}"))) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        revoked(&mirror, "before"),
        "the old entry survived the reload"
    );
    for i in 0..500 {
        assert!(
            revoked(&mirror, &format!("during-{i}")),
            "entry {i} was lost"
        );
    }
    let _ = stop.send(true);
    let _ = task.await;
}
