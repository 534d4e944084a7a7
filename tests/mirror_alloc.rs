//! The revocation check allocates nothing, and a mirror of 1 M entries stays under 200 MB
//! (SPEC §11). Measured with a counting allocator; figures are printed, never timed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

use credbroker::revoke::{
    CredentialRef, EntryKind, NEVER, RevocationEntry, RevocationMirror, Revoked,
};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static THREAD_ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        THREAD_ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        THREAD_ALLOCS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn thread_allocs() -> usize {
    THREAD_ALLOCS.with(Cell::get)
}

const NOW: i64 = 1_700_000_000;

fn entry(kind: EntryKind, value: String, issued_before: Option<i64>) -> RevocationEntry {
    RevocationEntry {
        kind,
        value,
        issued_before,
        expires_at: NOW + 3600,
        reason: None,
    }
}

/// A 22-character base64url id, like the `jti`s the broker mints.
fn jti(i: usize) -> String {
    format!("q3Zb-Y_7kP2mXw{i:08}")
}

#[test]
fn check_does_not_allocate() {
    let m = RevocationMirror::new();
    for i in 0..1000 {
        m.apply(entry(EntryKind::Credential, jti(i), None), None);
        m.apply(
            entry(
                EntryKind::SpiffeId,
                format!("spiffe://example.org/w{i}"),
                Some(NOW - 100),
            ),
            None,
        );
        m.apply(
            entry(EntryKind::Source, format!("src{i}"), Some(NOW - 100)),
            None,
        );
    }
    m.apply(
        entry(EntryKind::Credential, "7a:3f:00:11".into(), None),
        None,
    );
    m.apply(entry(EntryKind::All, String::new(), Some(NOW - 1000)), None);
    let mut lock = entry(EntryKind::Lock, "spiffe://example.org/w1".into(), None);
    lock.expires_at = NEVER;
    m.apply(lock, None);

    let chain = vec![
        "root-credential-id-000".to_string(),
        "7A:3F:00:11".to_string(),
    ];
    let actors = ["spiffe://example.org/agent", "spiffe://example.org/w7"];
    let clean = CredentialRef {
        id: "not-revoked-0000000000",
        spiffe_id: "spiffe://example.org/other",
        source: "other",
        issued_at: NOW - 10,
        chain: &chain[..1],
        actors: &actors[..1],
    };
    let cases = [
        (clean, None),
        (
            CredentialRef {
                id: "00FF:EE",
                ..clean
            },
            None,
        ),
        (
            CredentialRef {
                id: "q3Zb-Y_7kP2mXw00000005",
                ..clean
            },
            Some(Revoked::Credential),
        ),
        (
            CredentialRef {
                chain: &chain,
                ..clean
            },
            Some(Revoked::Ancestor),
        ),
        (
            CredentialRef {
                spiffe_id: "spiffe://example.org/w3",
                issued_at: NOW - 200,
                ..clean
            },
            Some(Revoked::SpiffeId),
        ),
        (
            CredentialRef {
                actors: &actors,
                issued_at: NOW - 200,
                ..clean
            },
            Some(Revoked::Actor),
        ),
        (
            CredentialRef {
                source: "src9",
                issued_at: NOW - 200,
                ..clean
            },
            Some(Revoked::Source),
        ),
        (
            CredentialRef {
                issued_at: NOW - 2000,
                ..clean
            },
            Some(Revoked::All),
        ),
    ];
    // Warm up (lazy statics, thread-locals) before counting.
    for (c, _) in &cases {
        m.check(c, NOW);
    }
    let before = thread_allocs();
    for _ in 0..1000 {
        for (c, expected) in &cases {
            assert_eq!(m.check(c, NOW), *expected);
        }
    }
    assert_eq!(thread_allocs() - before, 0, "check allocated");
    // The lock query allocates only when there is a lock to describe.
    let before = thread_allocs();
    assert!(m.lock_of("spiffe://example.org/w2", NOW).is_none());
    assert_eq!(thread_allocs() - before, 0);
}

#[test]
fn a_million_entries_fit_in_200_mb() {
    const N: usize = 1_000_000;
    let m = RevocationMirror::new();
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut batch = Vec::with_capacity(N);
    for i in 0..N {
        batch.push(entry(EntryKind::Credential, jti(i), None));
    }
    m.replace_all(batch, "1-0".into());
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let mb = bytes as f64 / 1e6;
    println!(
        "mirror of {N} credential entries: {mb:.1} MB ({} bytes/entry)",
        bytes / N as isize
    );
    assert_eq!(m.len(), N);
    assert!(mb < 200.0, "{mb:.1} MB");
}
