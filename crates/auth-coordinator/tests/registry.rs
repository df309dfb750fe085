//! The registry on a real PostgreSQL, each test in its own schema.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{pg_url, TestSchema};
use wafleet_auth_coordinator::registry::StoredReply;
use wafleet_auth_coordinator::{Registry, RegistryError};
use wafleet_bus_schema::v1::{ReasonCode, SessionStatus};
use wafleet_bus_schema::{SessionAddress, WorkerId};

const TTL: Duration = Duration::from_secs(30);

fn address(session: &str) -> SessionAddress {
    SessionAddress::new("acme", session).expect("address")
}

fn worker(name: &str) -> WorkerId {
    WorkerId::new(name).expect("worker")
}

#[tokio::test]
async fn migrations_apply_once_even_when_two_coordinators_start_together() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let config = schema.config();
    let (a, b) = tokio::join!(Registry::connect(&config), Registry::connect(&config));
    a.expect("first coordinator");
    b.expect("second coordinator");
    // A third start on the migrated schema changes nothing.
    Registry::connect(&config).await.expect("restart");
    let client = common::admin(&url).await;
    let rows = client
        .query(
            &format!("SELECT version FROM {}.schema_migrations", schema.name),
            &[],
        )
        .await
        .expect("schema_migrations");
    assert_eq!(
        rows.len(),
        wafleet_auth_coordinator::migrations::MIGRATIONS.len()
    );
    schema.drop_schema().await;
}

#[tokio::test]
async fn epochs_only_grow() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let s = address("support-1");
    let created = registry
        .create_session(&s, &BTreeMap::new())
        .await
        .expect("create");
    assert_eq!(created.epoch, 0);
    assert!(matches!(
        registry.create_session(&s, &BTreeMap::new()).await,
        Err(RegistryError::AlreadyExists(_))
    ));

    let mut last = 0;
    for name in ["worker-0", "worker-1", "worker-0"] {
        let lease = registry
            .grant_lease(&s, &worker(name), TTL)
            .await
            .expect("grant");
        assert!(lease.epoch > last, "{} after {last}", lease.epoch);
        last = lease.epoch;
    }
    // Releasing keeps the epoch; the next grant goes above it.
    let released = registry
        .release_lease(&s, &worker("worker-0"), last)
        .await
        .expect("release");
    assert_eq!(released.epoch, last);
    assert_eq!(registry.session(&s).await.expect("session").epoch, last);
    let again = registry
        .grant_lease(&s, &worker("worker-1"), TTL)
        .await
        .expect("grant");
    assert_eq!(again.epoch, last + 1);
    // Stop ends the lease but not the epoch.
    let (_, stopped) = registry
        .set_desired(&s, false, wafleet_bus_schema::v1::ReasonCode::Requested)
        .await
        .expect("stop");
    assert_eq!(stopped.epoch, last + 1);
    assert_eq!(stopped.worker, None);
    let after = registry
        .grant_lease(&s, &worker("worker-0"), TTL)
        .await
        .expect("grant");
    assert_eq!(after.epoch, last + 2);
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_stale_epoch_cannot_commit_renew_or_release() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let s = address("support-1");
    registry
        .create_session(&s, &BTreeMap::new())
        .await
        .expect("create");

    // Not leased: nobody may commit.
    assert!(matches!(
        registry.commit_blob_version(&s, 0, 1).await,
        Err(RegistryError::Fenced { .. })
    ));
    let old = registry
        .grant_lease(&s, &worker("worker-0"), TTL)
        .await
        .expect("grant");
    registry
        .commit_blob_version(&s, old.epoch, 1)
        .await
        .expect("commit v1");
    let new = registry
        .grant_lease(&s, &worker("worker-1"), TTL)
        .await
        .expect("grant");
    assert!(new.epoch > old.epoch);

    match registry.commit_blob_version(&s, old.epoch, 2).await {
        Err(RegistryError::Fenced { epoch, current, .. }) => {
            assert_eq!(epoch, old.epoch);
            assert_eq!(current, new.epoch);
        }
        other => panic!("stale commit: {other:?}"),
    }
    assert!(matches!(
        registry
            .renew_lease(&s, &worker("worker-0"), old.epoch, TTL, TTL)
            .await,
        Err(RegistryError::Fenced { .. })
    ));
    assert!(matches!(
        registry
            .release_lease(&s, &worker("worker-0"), old.epoch)
            .await,
        Err(RegistryError::Fenced { .. })
    ));
    // The right epoch from the wrong worker is refused too.
    assert!(matches!(
        registry
            .renew_lease(&s, &worker("worker-0"), new.epoch, TTL, TTL)
            .await,
        Err(RegistryError::Fenced { .. })
    ));
    // The stale attempts changed nothing.
    let record = registry.session(&s).await.expect("session");
    assert_eq!((record.blob_version, record.blob_epoch), (1, old.epoch));
    assert_eq!(record.worker, Some(worker("worker-1")));

    registry
        .commit_blob_version(&s, new.epoch, 2)
        .await
        .expect("commit v2");
    assert!(matches!(
        registry.commit_blob_version(&s, new.epoch, 2).await,
        Err(RegistryError::StaleBlobVersion { committed: 2, .. })
    ));
    registry
        .renew_lease(&s, &worker("worker-1"), new.epoch, TTL, TTL)
        .await
        .expect("renew");
    registry
        .release_lease(&s, &worker("worker-1"), new.epoch)
        .await
        .expect("release");
    // Released: even the last holder's epoch no longer commits.
    assert!(matches!(
        registry.commit_blob_version(&s, new.epoch, 3).await,
        Err(RegistryError::Fenced { .. })
    ));
    let record = registry.session(&s).await.expect("session");
    assert_eq!((record.blob_version, record.blob_epoch), (2, new.epoch));
    assert!(matches!(
        registry.commit_blob_version(&address("nope"), 1, 1).await,
        Err(RegistryError::UnknownSession(_))
    ));
    schema.drop_schema().await;
}

#[tokio::test]
async fn concurrent_grants_get_distinct_increasing_epochs_and_one_holder() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let s = address("support-1");
    registry
        .create_session(&s, &BTreeMap::new())
        .await
        .expect("create");

    const GRANTS: u64 = 32;
    let tasks: Vec<_> = (0..GRANTS)
        .map(|i| {
            let registry = registry.clone();
            let s = s.clone();
            tokio::spawn(async move {
                registry
                    .grant_lease(&s, &worker(&format!("worker-{i}")), TTL)
                    .await
            })
        })
        .collect();
    let mut leases = Vec::new();
    for task in tasks {
        leases.push(task.await.expect("task").expect("grant"));
    }
    let epochs: BTreeSet<u64> = leases.iter().map(|l| l.epoch).collect();
    assert_eq!(epochs.len() as u64, GRANTS, "epochs must be distinct");
    assert_eq!(epochs, (1..=GRANTS).collect::<BTreeSet<u64>>());

    let record = registry.session(&s).await.expect("session");
    assert_eq!(record.epoch, GRANTS);
    let last = leases.iter().max_by_key(|l| l.epoch).expect("a lease");
    assert_eq!(record.worker.as_ref(), Some(&last.worker));
    // Exactly one holder can commit: the last one.
    let mut committed = 0;
    for (version, lease) in leases.iter().enumerate() {
        if registry
            .commit_blob_version(&s, lease.epoch, version as u64 + 1)
            .await
            .is_ok()
        {
            committed += 1;
            assert_eq!(lease.epoch, GRANTS);
        }
    }
    assert_eq!(committed, 1);
    schema.drop_schema().await;
}

#[tokio::test]
async fn dead_workers_lose_their_leases_and_grants_go_to_the_least_loaded() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let dead_after = Duration::from_secs(1);
    registry
        .record_heartbeat(&worker("small"), 2, false, "t")
        .await
        .expect("heartbeat");
    registry
        .record_heartbeat(&worker("big"), 10, false, "t")
        .await
        .expect("heartbeat");
    let mut holders = BTreeMap::new();
    for i in 0..6 {
        let s = address(&format!("s{i}"));
        registry
            .create_session(&s, &BTreeMap::new())
            .await
            .expect("create");
        let lease = registry
            .grant_to_least_loaded(&s, None, TTL, dead_after)
            .await
            .expect("grant")
            .expect("a worker");
        *holders
            .entry(lease.worker.as_str().to_string())
            .or_insert(0) += 1;
    }
    // Fewest sessions relative to capacity (ties by name): big 0/10, small 0/2, big 1/10,
    // big 2/10, big 3/10, big 4/10 (small at 1/2 is more loaded than 4/10).
    let expected: BTreeMap<String, i32> = [("big".to_string(), 5), ("small".to_string(), 1)]
        .into_iter()
        .collect();
    assert_eq!(holders, expected);

    // big goes silent; small stays.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    registry
        .record_heartbeat(&worker("small"), 2, false, "t")
        .await
        .expect("heartbeat");
    let ended = registry.expire_leases(dead_after).await.expect("expire");
    assert!(!ended.is_empty());
    assert!(
        ended.iter().all(|l| l.worker.as_str() == "big"),
        "{ended:?}"
    );
    let unleased = registry.unleased_running(100).await.expect("unleased");
    // Sessions that were never started are not "running": nothing to regrant yet.
    assert!(unleased.is_empty());
    assert_eq!(ended.len(), 5);
    let mut regranted = 0;
    for lease in &ended {
        let record = registry.session(&lease.address).await.expect("session");
        assert_eq!(record.worker, None);
        assert_eq!(record.epoch, lease.epoch);
        let next = registry
            .grant_to_least_loaded(&lease.address, None, TTL, dead_after)
            .await
            .expect("grant");
        // Only small is alive, with room for one more; the dead big is never chosen.
        if let Some(next) = next {
            assert_eq!(next.worker.as_str(), "small");
            assert_eq!(next.epoch, lease.epoch + 1);
            regranted += 1;
        }
    }
    assert_eq!(regranted, 1);
    schema.drop_schema().await;
}

/// A start command and the tick may both see a session unleased and both grant it; the
/// second must change nothing (it used to grant epoch + 1 over the first, and the worker
/// then superseded a session it had just started).
#[tokio::test]
async fn a_grant_for_a_session_leased_meanwhile_changes_nothing() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let dead_after = Duration::from_secs(10);
    for w in ["w1", "w2"] {
        registry
            .record_heartbeat(&worker(w), 10, false, "t")
            .await
            .expect("heartbeat");
    }
    let s = address("raced");
    registry
        .create_session(&s, &BTreeMap::new())
        .await
        .expect("create");
    let first = registry
        .grant_to_least_loaded(&s, None, TTL, dead_after)
        .await
        .expect("grant")
        .expect("a worker");
    let second = registry
        .grant_to_least_loaded(&s, None, TTL, dead_after)
        .await;
    assert!(
        matches!(&second, Err(RegistryError::AlreadyLeased { holder: Some(h), .. }) if h == first.worker.as_str()),
        "{second:?}"
    );
    // Moving it off a holder it no longer has changes nothing either.
    let other = if first.worker.as_str() == "w1" {
        "w2"
    } else {
        "w1"
    };
    let moved = registry
        .grant_to_least_loaded(&s, Some(&worker(other)), TTL, dead_after)
        .await;
    assert!(
        matches!(moved, Err(RegistryError::AlreadyLeased { .. })),
        "{moved:?}"
    );
    let record = registry.session(&s).await.expect("session");
    assert_eq!(record.epoch, first.epoch);
    assert_eq!(record.worker.as_ref(), Some(&first.worker));
    // From the real holder it moves, to the other worker, at epoch + 1.
    let next = registry
        .grant_to_least_loaded(&s, Some(&first.worker), TTL, dead_after)
        .await
        .expect("move")
        .expect("a worker");
    assert_eq!(next.worker.as_str(), other);
    assert_eq!(next.epoch, first.epoch + 1);
    schema.drop_schema().await;
}

/// The expiry a holder is told is never after the moment its worker would count as dead:
/// `expire_leases` ends a silent worker's leases before a long TTL runs out, so a worker
/// that trusted the TTL could act on a lease that has moved.
#[tokio::test]
async fn a_granted_or_renewed_expiry_is_bounded_by_the_workers_death_time() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let dead_after = Duration::from_secs(2);
    let w = worker("w");
    registry
        .record_heartbeat(&w, 10, false, "t")
        .await
        .expect("heartbeat");
    let s = address("bounded");
    registry
        .create_session(&s, &BTreeMap::new())
        .await
        .expect("create");
    let left = |at: std::time::SystemTime| {
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    let lease = registry
        .grant_to_least_loaded(&s, None, TTL, dead_after)
        .await
        .expect("grant")
        .expect("a worker");
    assert!(left(lease.expires_at) <= dead_after, "{lease:?}");
    assert!(left(lease.expires_at) > Duration::from_secs(1), "{lease:?}");
    // A while after the heartbeat, a renewal is bounded by that heartbeat, not by now.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let renewed = registry
        .renew_lease(&s, &w, lease.epoch, TTL, dead_after)
        .await
        .expect("renew");
    assert!(
        left(renewed.expires_at) <= dead_after - Duration::from_millis(700),
        "{renewed:?}"
    );
    // With a death time beyond the TTL, the TTL bounds it.
    let long = registry
        .renew_lease(&s, &w, lease.epoch, Duration::from_secs(3), TTL)
        .await
        .expect("renew");
    assert!(left(long.expires_at) <= Duration::from_secs(3), "{long:?}");
    assert!(left(long.expires_at) > Duration::from_secs(2), "{long:?}");
    schema.drop_schema().await;
}

#[tokio::test]
async fn command_replies_are_kept_once_per_tenant_and_id() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let first = StoredReply {
        verb: "create".into(),
        session: "support-1".into(),
        payload_hash: vec![1; 32],
        reply: b"first".to_vec(),
    };
    let second = StoredReply {
        reply: b"second".to_vec(),
        ..first.clone()
    };
    assert_eq!(
        registry.stored_reply("acme", "c1").await.expect("read"),
        None
    );
    assert_eq!(
        registry
            .store_reply("acme", "c1", &first)
            .await
            .expect("store"),
        first
    );
    assert_eq!(
        registry
            .store_reply("acme", "c1", &second)
            .await
            .expect("store"),
        first
    );
    // Another tenant has its own ids.
    assert_eq!(
        registry
            .store_reply("globex", "c1", &second)
            .await
            .expect("store"),
        second
    );
    assert_eq!(
        registry.stored_reply("acme", "c1").await.expect("read"),
        Some(first)
    );
    // Pruning keeps anything younger than the retention.
    assert_eq!(
        registry
            .prune_replies(Duration::from_secs(3600))
            .await
            .expect("prune"),
        0
    );
    schema.drop_schema().await;
}

async fn running(registry: &Registry, name: &str) -> SessionAddress {
    let s = address(name);
    registry
        .create_session(&s, &BTreeMap::new())
        .await
        .expect("create");
    registry
        .set_desired(&s, true, ReasonCode::Requested)
        .await
        .expect("start");
    s
}

/// Sticky re-grant: an unleased session goes back to the worker that held it last when
/// that worker is live, not draining and has room, even if another is less loaded; a
/// session moved off a draining worker goes to the least loaded one.
#[tokio::test]
async fn a_grant_prefers_the_last_holder_when_it_can_take_the_session() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let dead_after = Duration::from_secs(1);
    let (busy, idle) = (worker("busy"), worker("idle"));
    for (w, capacity) in [(&busy, 4), (&idle, 4)] {
        registry
            .record_heartbeat(w, capacity, false, "t")
            .await
            .expect("heartbeat");
    }
    // busy holds three sessions, idle none.
    for i in 0..3 {
        let s = running(&registry, &format!("load{i}")).await;
        registry.grant_lease(&s, &busy, TTL).await.expect("grant");
    }
    let s = running(&registry, "sticky").await;
    let first = registry.grant_lease(&s, &busy, TTL).await.expect("grant");
    registry
        .release_lease(&s, &busy, first.epoch)
        .await
        .expect("release");
    let again = registry
        .grant_to_least_loaded(&s, None, TTL, dead_after)
        .await
        .expect("grant")
        .expect("a worker");
    assert_eq!(again.worker, busy, "the last holder first: {again:?}");
    assert_eq!(again.epoch, first.epoch + 1);

    // Moving off a draining worker: the least loaded other one, never the last holder.
    registry.mark_draining(&busy).await.expect("drain");
    let moved = registry
        .grant_to_least_loaded(&s, Some(&busy), TTL, dead_after)
        .await
        .expect("grant")
        .expect("a worker");
    assert_eq!(moved.worker, idle);

    // idle is now the last holder; with no room (capacity 0) the grant goes elsewhere.
    registry
        .release_lease(&s, &idle, moved.epoch)
        .await
        .expect("release");
    registry
        .record_heartbeat(&idle, 0, false, "t")
        .await
        .expect("heartbeat");
    let helper = worker("helper");
    registry
        .record_heartbeat(&helper, 10, false, "t")
        .await
        .expect("heartbeat");
    let elsewhere = registry
        .grant_to_least_loaded(&s, None, TTL, dead_after)
        .await
        .expect("grant")
        .expect("a worker");
    assert_eq!(elsewhere.worker, helper, "idle has no room: {elsewhere:?}");
    registry
        .release_lease(&s, &helper, elsewhere.epoch)
        .await
        .expect("release");
    // helper goes silent: a grant may not prefer it.
    registry
        .record_heartbeat(&idle, 4, false, "t")
        .await
        .expect("heartbeat");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    registry
        .record_heartbeat(&idle, 4, false, "t")
        .await
        .expect("heartbeat");
    let live = registry
        .grant_to_least_loaded(&s, None, TTL, dead_after)
        .await
        .expect("grant")
        .expect("a worker");
    assert_eq!(
        live.worker, idle,
        "the silent last holder is skipped: {live:?}"
    );
    schema.drop_schema().await;
}

/// Reconciliation's question: which of a worker's leases does its heartbeat omit? Only
/// grants older than the given age count.
#[tokio::test]
async fn unlisted_leases_are_the_old_grants_a_heartbeat_omits() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let (w, other) = (worker("w"), worker("other"));
    let mut leases = Vec::new();
    for name in ["u1", "u2", "u3"] {
        let s = running(&registry, name).await;
        leases.push(registry.grant_lease(&s, &w, TTL).await.expect("grant"));
    }
    let elsewhere = running(&registry, "u4").await;
    registry
        .grant_lease(&elsewhere, &other, TTL)
        .await
        .expect("grant");
    let listed = |l: &wafleet_auth_coordinator::Lease, epoch: u64| {
        (
            "acme".to_string(),
            l.address.session.as_str().to_string(),
            epoch,
        )
    };
    let min_age = Duration::from_millis(600);
    // Fresh grants: nothing counts yet.
    let young = registry
        .unlisted_leases(&w, &[listed(&leases[0], leases[0].epoch)], min_age)
        .await
        .expect("unlisted");
    assert!(young.is_empty(), "{young:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // u1 listed at its epoch, u2 at an older one (not the lease the registry gives), u3
    // not at all; u4 is another worker's.
    let unlisted = registry
        .unlisted_leases(
            &w,
            &[
                listed(&leases[0], leases[0].epoch),
                listed(&leases[1], leases[1].epoch - 1),
            ],
            min_age,
        )
        .await
        .expect("unlisted");
    let names: Vec<&str> = unlisted
        .iter()
        .map(|l| l.address.session.as_str())
        .collect();
    assert_eq!(names, ["u2", "u3"]);
    assert!(unlisted.iter().all(|l| l.worker == w));
    // Released by the caller, they keep their epochs and remember the holder.
    for lease in &unlisted {
        registry
            .release_lease(&lease.address, &w, lease.epoch)
            .await
            .expect("release");
    }
    assert!(registry
        .unlisted_leases(&w, &[], min_age)
        .await
        .expect("unlisted")
        .iter()
        .all(|l| l.address.session.as_str() == "u1"));
    schema.drop_schema().await;
}

/// A release because the blob store cannot be reached backs the session's next grant off
/// (1 s, 2 s, … capped at 10 s); other releases do not; WORKING resets the backoff.
#[tokio::test]
async fn blob_store_unavailable_releases_back_the_next_grant_off() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let w = worker("w");
    let s = running(&registry, "blob").await;
    let is_due = || async {
        registry
            .unleased_running(10)
            .await
            .expect("unleased")
            .contains(&s)
    };
    let release = |reason: ReasonCode| {
        let (registry, s, w) = (registry.clone(), s.clone(), w.clone());
        async move {
            let lease = registry.grant_lease(&s, &w, TTL).await.expect("grant");
            registry
                .release_lease_as(&s, &w, lease.epoch, reason)
                .await
                .expect("release");
            lease
        }
    };
    // A routine release: due at once.
    release(ReasonCode::ConnectionLost).await;
    assert!(is_due().await);

    // First blob-store release: 1 s.
    release(ReasonCode::BlobStoreUnavailable).await;
    assert!(!is_due().await, "backed off right after the release");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!is_due().await, "still backed off at 0.7 s");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(is_due().await, "due after 1 s");

    // Second in a row: 2 s.
    release(ReasonCode::BlobStoreUnavailable).await;
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert!(!is_due().await, "the second backoff is longer than 1.4 s");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(is_due().await, "due after 2 s");

    // The session reaches WORKING: the count starts again (1 s).
    let lease = registry.grant_lease(&s, &w, TTL).await.expect("grant");
    assert!(registry
        .record_status(
            &s,
            &w,
            lease.epoch,
            SessionStatus::Working,
            ReasonCode::Unspecified,
            None
        )
        .await
        .expect("status"));
    registry
        .release_lease_as(&s, &w, lease.epoch, ReasonCode::BlobStoreUnavailable)
        .await
        .expect("release");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(is_due().await, "reset by WORKING: 1 s again");

    // The cap: after many in a row the pause is 10 s, not more.
    let client = common::admin(&url).await;
    client
        .execute(
            &format!(
                "UPDATE {}.sessions SET blob_unavailable_count = 20",
                schema.name
            ),
            &[],
        )
        .await
        .expect("count");
    release(ReasonCode::BlobStoreUnavailable).await;
    let pause: f64 = client
        .query_one(
            &format!(
                "SELECT EXTRACT(EPOCH FROM retry_after - now())::float8 FROM {}.sessions
                 WHERE session = 'blob'",
                schema.name
            ),
            &[],
        )
        .await
        .expect("retry_after")
        .get(0);
    assert!((9.0..=10.0).contains(&pause), "capped at 10 s: {pause}");
    schema.drop_schema().await;
}

/// The leader horizon: nothing ends before it, however silent the worker.
#[tokio::test]
async fn no_lease_ends_before_the_leader_horizon() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let w = worker("silent");
    registry
        .record_heartbeat(&w, 10, false, "t")
        .await
        .expect("heartbeat");
    let s = running(&registry, "h1").await;
    let lease = registry.grant_lease(&s, &w, TTL).await.expect("grant");
    let dead_after = Duration::from_millis(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let horizon = std::time::SystemTime::now() + Duration::from_millis(800);
    let early = registry
        .expire_leases_after(dead_after, Some(horizon))
        .await
        .expect("expire");
    assert!(early.is_empty(), "{early:?}");
    assert_eq!(
        registry.session(&s).await.expect("session").worker,
        Some(w.clone())
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    let ended = registry
        .expire_leases_after(dead_after, Some(horizon))
        .await
        .expect("expire");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].epoch, lease.epoch);
    schema.drop_schema().await;
}

/// Right after the coordinator (re)gains NATS every worker has been silent; a session
/// must wait for its last worker, not go to whichever worker was heard first. Once the
/// last worker is heard it gets the session back; a session that never had a worker goes
/// anywhere.
#[tokio::test]
async fn a_grant_to_the_last_worker_waits_for_it_and_never_picks_another() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let registry = schema.registry().await;
    let dead_after = Duration::from_secs(1);
    for w in ["early", "late"] {
        registry
            .record_heartbeat(&worker(w), 10, false, "t")
            .await
            .expect("heartbeat");
    }
    let s = address("sticky");
    registry
        .create_session(&s, &BTreeMap::new())
        .await
        .expect("create");
    // "early" has fewer sessions relative to capacity after this, so least-loaded
    // placement would pick it; hold the session on "late" first.
    let mut lease = registry
        .grant_to_least_loaded(&s, None, TTL, dead_after)
        .await
        .expect("grant")
        .expect("a worker");
    if lease.worker.as_str() != "late" {
        lease = registry
            .grant_to_least_loaded(&s, Some(&lease.worker), TTL, dead_after)
            .await
            .expect("move")
            .expect("a worker");
    }
    assert_eq!(lease.worker.as_str(), "late");
    registry
        .release_lease(&s, &lease.worker, lease.epoch)
        .await
        .expect("release");
    // Both silent past dead-after; only "early" comes back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    registry
        .record_heartbeat(&worker("early"), 10, false, "t")
        .await
        .expect("heartbeat");
    let waiting = registry
        .grant_to_last_worker(&s, TTL, dead_after)
        .await
        .expect("grant");
    assert!(waiting.is_none(), "{waiting:?}");
    let record = registry.session(&s).await.expect("session");
    assert_eq!(record.worker, None);
    assert_eq!(record.epoch, lease.epoch);
    // "late" is heard: the session goes back to it.
    registry
        .record_heartbeat(&worker("late"), 10, false, "t")
        .await
        .expect("heartbeat");
    let back = registry
        .grant_to_last_worker(&s, TTL, dead_after)
        .await
        .expect("grant")
        .expect("the last worker");
    assert_eq!(back.worker.as_str(), "late");
    assert_eq!(back.epoch, lease.epoch + 1);
    // A session no worker ever held is placed at once.
    let fresh = address("fresh");
    registry
        .create_session(&fresh, &BTreeMap::new())
        .await
        .expect("create");
    let placed = registry
        .grant_to_last_worker(&fresh, TTL, dead_after)
        .await
        .expect("grant");
    assert!(placed.is_some(), "{placed:?}");
    schema.drop_schema().await;
}
