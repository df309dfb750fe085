//! Failover on real NATS, PostgreSQL and S3: a worker killed with SIGKILL, a paused
//! (zombie) worker, a drained worker, a killed leading coordinator. The simulator checks
//! that no device ever had two live sockets.

mod fleet_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fleet_support::{eventually, Fleet};
use wafleet_blob::SessionBlob;
use wafleet_bus_schema::v1::SessionStatus;
use wafleet_bus_schema::CommandVerb;

/// Sessions WORKING at an epoch above `above[session]`, on `worker`.
fn working_after(
    fleet: &Fleet,
    sessions: &[String],
    above: &HashMap<String, u64>,
    worker: &str,
) -> usize {
    sessions
        .iter()
        .filter(|s| {
            fleet.events_of(s).iter().any(|e| {
                e.event.epoch > above[*s]
                    && e.event.worker_id == worker
                    && e.status().map(|x| x.0) == Some(SessionStatus::Working)
            })
        })
        .count()
}

fn epochs(fleet: &Fleet, sessions: &[String]) -> HashMap<String, u64> {
    sessions
        .iter()
        .map(|s| {
            let epoch = fleet
                .events_of(s)
                .iter()
                .map(|e| e.event.epoch)
                .max()
                .unwrap_or(0);
            (s.clone(), epoch)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_move_to_the_other_worker_after_sigkill_without_a_qr() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-first", 50).await;
    let sessions: Vec<String> = (0..50).map(|i| format!("s{i:02}")).collect();
    for s in &sessions {
        fleet.create_and_start(s).await;
    }
    let links = sessions.iter().enumerate().map(|(i, s)| {
        let phone = format!("1555100{i:04}");
        let fleet = &fleet;
        async move { fleet.link_by_qr(s, &phone).await }
    });
    let holders = futures_util::future::join_all(links).await;
    assert!(holders.iter().all(|w| w == "w-first"), "{holders:?}");
    let before = epochs(&fleet, &sessions);
    fleet.start_worker("w-second", 50).await;
    let killed_at = Instant::now();
    fleet.kill_worker("w-first");
    eventually(
        Duration::from_secs(90),
        "all 50 WORKING on w-second",
        || {
            let n = working_after(&fleet, &sessions, &before, "w-second");
            async move { (n == 50).then_some(()) }
        },
    )
    .await;
    eprintln!("50 sessions back in {:?}", killed_at.elapsed());
    for s in &sessions {
        let qr_after = fleet
            .events_of(s)
            .iter()
            .filter(|e| e.event.epoch > before[s] && e.kind() == "qr")
            .count();
        assert_eq!(qr_after, 0, "{s} showed a QR after failover");
    }
    let counters = fleet.sim.counters();
    assert_eq!(counters.replaced_sent, 0, "{counters:?}");
    assert!(
        counters.max_live_sockets_per_device <= 1,
        "a device had two live sockets: {counters:?}"
    );
    fleet.kill_worker("w-second");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_worker_cannot_write_the_blob_and_does_not_reconnect() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-zombie", 10).await;
    fleet.create_and_start("z").await;
    fleet.link_by_qr("z", "15550004001").await;
    let before = epochs(&fleet, &["z".to_string()]);
    let blob_epoch = |bytes: &[u8]| SessionBlob::parse(bytes).expect("envelope").epoch();
    // The prekeys are saved (and then uploaded) after the login: wait for the upload, so
    // every write the zombie may legitimately make is done.
    eventually(Duration::from_secs(20), "prekeys uploaded", || {
        let n: u64 = fleet.sim.counters().prekey_uploads.values().sum();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let logins_before = fleet.sim.counters().logins.values().sum::<u64>();
    fleet.start_worker("w-heir", 10).await;
    // Paused past its lease: the coordinator gives the session to the other worker.
    fleet.workers["w-zombie"].signal("STOP");
    let old_blob = fleet.blob_bytes("z").await.expect("blob");
    assert_eq!(blob_epoch(&old_blob), before["z"]);
    eventually(Duration::from_secs(60), "z WORKING on w-heir", || {
        let n = working_after(&fleet, &["z".to_string()], &before, "w-heir");
        async move { (n == 1).then_some(()) }
    })
    .await;
    let heir_epoch = fleet
        .events_of("z")
        .iter()
        .filter(|e| e.event.worker_id == "w-heir")
        .map(|e| e.event.epoch)
        .max()
        .expect("heir epoch");
    // The stream is one sequence: everything the zombie published before it stopped came
    // before the heir's events, so it has all been collected by now.
    let from_zombie = |fleet: &Fleet| {
        fleet
            .events_of("z")
            .into_iter()
            .filter(|e| e.event.worker_id == "w-zombie")
            .count()
    };
    let zombie_events_before = from_zombie(&fleet);
    fleet.workers["w-zombie"].signal("CONT");
    // Give the zombie time to act on whatever it had queued.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Not a word after waking, at any epoch: its lease lapsed locally before the
    // coordinator could count it dead (not even a stale FAILED `replaced` for its old one).
    let zombie_events_after: Vec<_> = fleet
        .events_of("z")
        .into_iter()
        .filter(|e| e.event.worker_id == "w-zombie")
        .skip(zombie_events_before)
        .collect();
    assert!(zombie_events_after.is_empty(), "{zombie_events_after:?}");
    assert!(heir_epoch > before["z"]);
    // The heir still holds it, and the blob is the heir's (or untouched), never the zombie's.
    let row = fleet.registry_row("z").await.expect("row");
    assert_eq!(row.3.as_deref(), Some("w-heir"));
    assert_eq!(row.0, SessionStatus::Working as i32);
    let blob = fleet.blob_bytes("z").await.expect("blob");
    assert!(blob_epoch(&blob) >= before["z"]);
    assert!(
        blob_epoch(&blob) == heir_epoch || blob == old_blob,
        "the blob was written at epoch {}",
        blob_epoch(&blob)
    );
    // The zombie did not reconnect: one login for the heir, none after it.
    let logins_after = fleet.sim.counters().logins.values().sum::<u64>();
    assert_eq!(logins_after, logins_before + 1, "{}", fleet.logs());
    let zombie_log = fleet.workers["w-zombie"].log_text();
    assert!(
        zombie_log.contains("lease lost"),
        "the zombie did not notice: {zombie_log}"
    );
    fleet.kill_worker("w-zombie");
    fleet.kill_worker("w-heir");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_worker_and_its_sessions_move_without_two_sockets() {
    let mut fleet = Fleet::start().await;
    fleet.start_worker("w-leaving", 10).await;
    let sessions: Vec<String> = (0..5).map(|i| format!("d{i}")).collect();
    for (i, s) in sessions.iter().enumerate() {
        fleet.create_and_start(s).await;
        fleet.link_by_qr(s, &format!("1555200{i:04}")).await;
    }
    let before = epochs(&fleet, &sessions);
    fleet.start_worker("w-staying", 10).await;
    let leaving = fleet.workers.get_mut("w-leaving").expect("worker");
    leaving.signal("TERM");
    let status = leaving
        .wait_exit(Duration::from_secs(30))
        .expect("the worker exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    eventually(Duration::from_secs(60), "all WORKING on w-staying", || {
        let n = working_after(&fleet, &sessions, &before, "w-staying");
        async move { (n == 5).then_some(()) }
    })
    .await;
    let counters = fleet.sim.counters();
    assert_eq!(counters.replaced_sent, 0, "{counters:?}");
    assert!(counters.max_live_sockets_per_device <= 1, "{counters:?}");
    for s in &sessions {
        assert!(
            !fleet
                .events_of(s)
                .iter()
                .any(|e| e.event.epoch > before[s] && e.kind() == "qr"),
            "{s} showed a QR"
        );
    }
    fleet.kill_worker("w-staying");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leading_coordinator_killed_another_takes_over_and_sessions_stay_working() {
    let mut fleet = Fleet::start().await;
    fleet.start_coordinator();
    fleet.start_worker("w-steady", 10).await;
    fleet.create_and_start("c1").await;
    fleet.link_by_qr("c1", "15550005001").await;
    let row = fleet.registry_row("c1").await.expect("row");
    let epoch = row.2;
    // Find the leader: the coordinator holding the advisory lock answers commands. Kill
    // the one that logged leadership.
    let leader = eventually(Duration::from_secs(10), "a leader", || {
        let found = fleet
            .coordinators
            .iter()
            .position(|c| c.log_text().contains("leading: serving commands"));
        async move { found }
    })
    .await;
    fleet.coordinators[leader].signal("KILL");
    let _ = fleet.coordinators[leader].wait_exit(Duration::from_secs(5));
    // Commands are answered again (by the other coordinator) and the session is as it was.
    let reply = fleet.simple("c1", CommandVerb::Start).await;
    assert!(reply.error().is_none(), "{reply:?}");
    let other = 1 - leader;
    eventually(
        Duration::from_secs(15),
        "the other coordinator leads",
        || {
            let leads = fleet.coordinators[other]
                .log_text()
                .contains("leading: serving commands");
            async move { leads.then_some(()) }
        },
    )
    .await;
    // Past several lease TTLs: heartbeats reach the new leader, the lease stays.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let row = fleet.registry_row("c1").await.expect("row");
    assert_eq!(row.0, SessionStatus::Working as i32, "{}", fleet.logs());
    assert_eq!(row.2, epoch, "the session moved: {}", fleet.logs());
    assert_eq!(row.3.as_deref(), Some("w-steady"));
    let seen: HashSet<u64> = fleet
        .events_of("c1")
        .iter()
        .map(|e| e.event.epoch)
        .collect();
    assert_eq!(seen.len(), 1, "events at several epochs: {seen:?}");
    fleet.kill_worker("w-steady");
    fleet.finish().await;
}
