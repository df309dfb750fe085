//! Failover on real NATS, PostgreSQL and S3: a worker killed with SIGKILL, a paused
//! (zombie) worker, a drained worker, a killed leading coordinator. The simulator checks
//! that no device ever had two live sockets.

mod fleet_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fleet_support::{eventually, Fleet};
use wafleet_blob::SessionBlob;
use wafleet_bus_schema::v1::{session_event::Payload, SessionStatus};
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
    // A peer writes to the account before, during and after the pause; the zombie must
    // neither publish nor ack what reaches its socket.
    let peer = "15550004002";
    fleet.sim.add_phone(peer).expect("peer");
    let mut inbound = Vec::new();
    eventually(
        Duration::from_secs(20),
        "a first message on the bus",
        || {
            inbound.push(
                fleet
                    .sim
                    .phone_send_text(peer, "15550004001", &format!("before {}", inbound.len()))
                    .expect("send"),
            );
            let found = fleet.events_of("z").iter().any(|s| {
            matches!(&s.event.payload, Some(Payload::Message(m)) if inbound.contains(&m.id))
        });
            async move { found.then_some(()) }
        },
    )
    .await;
    // Paused past its lease: the coordinator gives the session to the other worker.
    fleet.workers["w-zombie"].signal("STOP");
    for i in 0..10 {
        inbound.push(
            fleet
                .sim
                .phone_send_text(peer, "15550004001", &format!("during {i}"))
                .expect("send"),
        );
    }
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
    for i in 0..10 {
        inbound.push(
            fleet
                .sim
                .phone_send_text(peer, "15550004001", &format!("after {i}"))
                .expect("send"),
        );
    }
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
    // Every message sent during and after the pause is on the bus, from the heir.
    let from_heir: HashSet<String> = fleet
        .events_of("z")
        .iter()
        .filter(|e| e.event.worker_id == "w-heir")
        .filter_map(|e| match &e.event.payload {
            Some(Payload::Message(m)) => Some(m.id.clone()),
            _ => None,
        })
        .collect();
    let missing: Vec<&String> = inbound[inbound.len() - 20..]
        .iter()
        .filter(|id| !from_heir.contains(*id))
        .collect();
    assert!(missing.is_empty(), "not published by the heir: {missing:?}");
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

/// A `send` of `text` under `command_id`, retried with the same id until it is sent: no
/// answer (the holder died, nobody holds the session yet) and transient errors are
/// retried, as a backend does. Returns the message id.
async fn send_until_sent(
    fleet: &Fleet,
    session: &str,
    command_id: &str,
    to: &str,
    text: &str,
) -> String {
    use wafleet_bus_schema::v1::{command_reply::Outcome, ErrorCode};
    let subject = Fleet::address(session)
        .command_subject(CommandVerb::Send)
        .to_string();
    let body =
        serde_json::json!({"commandId": command_id, "to": to, "text": {"body": text}}).to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "{command_id} never sent");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(wafleet_bus_schema::CONTENT_TYPE_HEADER, "application/json");
        let request = async_nats::Request::new()
            .payload(body.clone().into_bytes().into())
            .headers(headers)
            .timeout(Some(Duration::from_secs(3)));
        let answer = fleet.backend.send_request(subject.clone(), request).await;
        let Ok(message) = answer else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let reply = wafleet_bus_schema::decode_reply(&message.payload, Some("application/json"))
            .expect("a reply");
        match reply.outcome {
            Some(Outcome::Sent(sent)) => return sent.message_id,
            Some(Outcome::Error(e)) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                assert!(
                    matches!(
                        code,
                        ErrorCode::NotWorking
                            | ErrorCode::SendUnconfirmed
                            | ErrorCode::NotLeased
                            | ErrorCode::Unavailable
                            | ErrorCode::RateLimited
                    ),
                    "{command_id}: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("{command_id}: {other:?}"),
        }
    }
}

/// The holder of `session`: the worker of its newest event.
fn holder(fleet: &Fleet, session: &str) -> (String, u64) {
    fleet
        .events_of(session)
        .iter()
        .max_by_key(|e| (e.event.epoch, e.event.sequence))
        .map(|e| (e.event.worker_id.clone(), e.event.epoch))
        .expect("events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_holder_at_random_moments_loses_no_message_in_either_direction() {
    const N: usize = 120;
    const KILLS: usize = 3;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("kill schedule seed {seed}");
    let mut rng = seed;
    let mut next = move || {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut fleet = Fleet::start().await;
    let workers = ["w-k1", "w-k2", "w-k3", "w-k4"];
    fleet
        .start_worker_with(
            workers[0],
            10,
            fleet_support::MASTER_KEY,
            &["--send-rate", "1000", "--send-burst", "1000"],
        )
        .await;
    fleet.create_and_start("busy").await;
    let account = "15550004101";
    fleet.link_by_qr("busy", account).await;
    for w in &workers[1..] {
        fleet
            .start_worker_with(
                w,
                10,
                fleet_support::MASTER_KEY,
                &["--send-rate", "1000", "--send-burst", "1000"],
            )
            .await;
    }
    let peer = "15550004102";
    fleet.sim.add_phone(peer).expect("peer");
    // The peer's first messages may precede its knowledge of the companion's keys.
    let mut warm = Vec::new();
    eventually(Duration::from_secs(20), "a first inbound message", || {
        warm.push(
            fleet
                .sim
                .phone_send_text(peer, account, &format!("warm {}", warm.len()))
                .expect("send"),
        );
        let found = fleet.events_of("busy").iter().any(|s| {
            matches!(&s.event.payload, Some(wafleet_bus_schema::v1::session_event::Payload::Message(m)) if warm.contains(&m.id))
        });
        async move { found.then_some(()) }
    })
    .await;
    let delays: Vec<u64> = (0..KILLS).map(|_| 300 + next() % 2_500).collect();
    let fleet_ref = &fleet;
    let inbound = async move {
        let mut ids = Vec::new();
        for i in 0..N {
            ids.push(
                fleet_ref
                    .sim
                    .phone_send_text(peer, account, &format!("in {i}"))
                    .expect("the peer sends"),
            );
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        ids
    };
    let outbound = async move {
        let mut sent = Vec::new();
        for i in 0..N {
            let id = send_until_sent(
                fleet_ref,
                "busy",
                &format!("k-{i}"),
                peer,
                &format!("out {i}"),
            )
            .await;
            sent.push(id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    };
    let killer = async move {
        let mut killed = Vec::new();
        for delay in delays {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let (victim, epoch) = holder(fleet_ref, "busy");
            fleet_ref.workers[&victim].signal("KILL");
            killed.push(victim.clone());
            // The next holder takes over before the next kill (at most one of the four
            // workers is left after three kills).
            eventually(Duration::from_secs(60), "the next holder WORKING", || {
                let up = fleet_ref.events_of("busy").iter().any(|e| {
                    e.event.epoch > epoch
                        && e.event.worker_id != victim
                        && e.status().map(|s| s.0) == Some(SessionStatus::Working)
                });
                async move { up.then_some(()) }
            })
            .await;
        }
        killed
    };
    let (in_ids, out_ids, killed) = tokio::join!(inbound, outbound, killer);
    assert_eq!(killed.len(), KILLS);
    // Every inbound message is on the bus (duplicates only with the same id).
    let in_ids: HashSet<String> = in_ids.into_iter().collect();
    eventually(
        Duration::from_secs(60),
        "every inbound message on the bus",
        || {
            let seen: HashSet<String> = fleet
                .events_of("busy")
                .iter()
                .filter_map(|s| match &s.event.payload {
                    Some(wafleet_bus_schema::v1::session_event::Payload::Message(m)) => {
                        Some(m.id.clone())
                    }
                    _ => None,
                })
                .collect();
            let missing = in_ids.difference(&seen).count();
            async move { (missing == 0).then_some(()) }
        },
    )
    .await;
    let undecryptable: Vec<_> = fleet
        .events_of("busy")
        .into_iter()
        .filter(|s| s.kind() == "message_undecryptable")
        .collect();
    assert!(undecryptable.is_empty(), "seed {seed}: {undecryptable:?}");
    // Every send reached the peer exactly once, with the id its command was answered with.
    eventually(
        Duration::from_secs(30),
        "every send on the peer's phone",
        || {
            let texts: Vec<(String, Option<String>)> = fleet
                .sim
                .phone_messages(peer)
                .expect("messages")
                .into_iter()
                .filter(|m| m.text.as_deref().is_some_and(|t| t.starts_with("out ")))
                .map(|m| (m.id, m.text))
                .collect();
            async move { (texts.len() >= N).then_some(()) }
        },
    )
    .await;
    let on_phone: Vec<(String, String)> = fleet
        .sim
        .phone_messages(peer)
        .expect("messages")
        .into_iter()
        .filter_map(|m| Some((m.id, m.text?)))
        .filter(|(_, t)| t.starts_with("out "))
        .collect();
    let mut texts: Vec<&String> = on_phone.iter().map(|(_, t)| t).collect();
    texts.sort();
    let twice: Vec<&&String> = texts
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    assert!(twice.is_empty(), "seed {seed}: delivered twice: {twice:?}");
    let want: Vec<(String, String)> = out_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("out {i}")))
        .collect();
    assert_eq!(
        on_phone, want,
        "seed {seed}: once each, in order, with the replied ids"
    );
    assert!(fleet
        .sim
        .phone_messages(peer)
        .expect("messages")
        .iter()
        .all(|m| m.kind != "undecryptable"));
    let counters = fleet.sim.counters();
    assert!(
        counters.max_live_sockets_per_device <= 1,
        "seed {seed}: {counters:?}"
    );
    assert_eq!(counters.replaced_sent, 0, "seed {seed}");
    for w in workers {
        fleet.kill_worker(w);
    }
    fleet.finish().await;
}
