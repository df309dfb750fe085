//! The registry on a real PostgreSQL, each test in its own schema.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{pg_url, TestSchema};
use wafleet_auth_coordinator::registry::StoredReply;
use wafleet_auth_coordinator::{Registry, RegistryError};
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
    assert_eq!(rows.len(), 1);
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
