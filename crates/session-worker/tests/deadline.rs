//! Issue 11, the safety bug: a worker must never hold a session's socket past its lease
//! trust, whatever its session task is waiting for.
//!
//! A fleet worker runs in this process against a private NATS server (its binary from
//! `WAFLEET_NATS_SERVER`, see scripts/services.sh) and the simulator. A fake coordinator,
//! a plain NATS client, grants one session, answers heartbeats, renewals and blob commits
//! while the session links and logs in, and then answers nothing (as when NATS or the
//! coordinator goes away). The renewal the worker sends next hangs for its whole request
//! timeout (5 s); the worker's trust, counted from the last answer, ends 1.9 s after it.
//! The simulator's socket for the device must close before the coordinator's own view of
//! the trust ends (the last answer + the validity it granted), no event may be published
//! after that, and the heartbeats must list the lease for as long as the socket was open.
//!
//! The second test breaks the blob store (a directory store whose directory is replaced
//! by a file): a session keeps its lease while it waits, says `BLOB_STORE_UNAVAILABLE`
//! once, starts when the store is back, and hands the lease back with that reason only
//! after the blob wait.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use wafleet_blob::{BlobStore, FsBlobStore, Keyring, MasterKey, SessionVault};
use wafleet_bus_schema::codec::{decode, encode, ContentType};
use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::nats::{content_type_of, decode_event_message};
use wafleet_bus_schema::time::timestamp;
use wafleet_bus_schema::v1::{self, session_event::Payload, ReasonCode, SessionStatus};
use wafleet_bus_schema::{
    subject, SessionAddress, SysKind, SysSubject, WorkerId, CONTENT_TYPE_HEADER,
};
use wafleet_session_worker::fleet::metrics::Health;
use wafleet_session_worker::fleet::store::Vault;
use wafleet_session_worker::fleet::{Worker, WorkerConfig, WorkerError};
use wafleet_sim::SimConfig;

use support::{config_for, simulator_with_phone, PHONE};

/// How long the fake coordinator's answers make the worker's leases valid.
const VALID_FOR: Duration = Duration::from_millis(2400);

/// A private nats-server with JetStream, killed on drop.
struct Nats {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

async fn start_nats() -> Nats {
    let bin = std::env::var("WAFLEET_NATS_SERVER").unwrap_or_else(|_| {
        panic!(
            "WAFLEET_NATS_SERVER is not set: run `eval \"$(bash scripts/services.sh up)\"` first"
        )
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let nats = Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        _dir: dir,
    };
    let started = Instant::now();
    while async_nats::connect(&nats.url).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats
}

/// A worker running in this process on its own NATS connection.
struct RunningWorker {
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Starts the worker and waits until it takes leases.
    async fn start(config: WorkerConfig, nats_url: &str, vault: Arc<Vault>) -> RunningWorker {
        let client = async_nats::connect(nats_url).await.expect("connect");
        let worker = Worker::new(config, client, vault, Arc::new(Health::default()));
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(worker.run_with_ready(shutdown_rx, ready_tx));
        support::guard("the worker to be ready", ready.wait_for(|r| *r))
            .await
            .expect("the worker runs");
        RunningWorker { shutdown, task }
    }

    /// Shuts it down and checks it stopped cleanly.
    async fn stop(self) {
        let _ = self.shutdown.send(true);
        support::guard("the worker to stop", self.task)
            .await
            .expect("the worker task")
            .expect("the worker stops cleanly");
    }
}

fn headers() -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(CONTENT_TYPE_HEADER, ContentType::Protobuf.header_value());
    h
}

/// What the fake coordinator saw and did.
#[derive(Default, Clone)]
struct Seen {
    /// When it last answered a heartbeat, renewal or commit (each answer trusts the
    /// worker for [`VALID_FOR`] from then, at most).
    last_answer: Option<Instant>,
    /// Heartbeats received: when, and whether they listed the lease.
    heartbeats: Vec<(Instant, bool)>,
    /// Renewals received.
    renewals: Vec<Instant>,
    /// Releases received: when and why.
    releases: Vec<(Instant, i32)>,
}

fn grant(address: &SessionAddress, worker: &WorkerId, epoch: u64) -> internal::LeaseGrant {
    internal::LeaseGrant {
        tenant: address.tenant.as_str().to_string(),
        session: address.session.as_str().to_string(),
        epoch,
        worker_id: worker.as_str().to_string(),
        expires_at: Some(timestamp(SystemTime::now() + VALID_FOR)),
    }
}

fn lease_reply(grant: internal::LeaseGrant) -> internal::LeaseReply {
    internal::LeaseReply {
        outcome: Some(internal::lease_reply::Outcome::Lease(grant)),
    }
}

/// The fake coordinator: answers while `answering` holds (releases always), records all.
async fn fake_coordinator(
    client: async_nats::Client,
    worker: WorkerId,
    address: SessionAddress,
    epoch: u64,
    answering: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut requests = client
        .subscribe(subject::from_worker(&worker))
        .await
        .expect("subscribe to the worker's requests");
    while let Some(message) = requests.next().await {
        let now = Instant::now();
        let kind = SysSubject::parse(message.subject.as_str())
            .expect("a worker subject")
            .kind;
        let ct = ContentType::from_header(content_type_of(message.headers.as_ref()))
            .expect("a content type");
        let reply: Option<Vec<u8>> = match kind {
            SysKind::Heartbeat => {
                let hb: internal::WorkerHeartbeat =
                    decode(&message.payload, ct).expect("heartbeat");
                let listed = hb.leases.iter().any(|l| {
                    l.tenant == address.tenant.as_str()
                        && l.session == address.session.as_str()
                        && l.epoch == epoch
                });
                seen.lock().unwrap().heartbeats.push((now, listed));
                answering.load(Ordering::SeqCst).then(|| {
                    let ack = internal::HeartbeatAck {
                        renewed: hb.leases,
                        valid_for_ms: VALID_FOR.as_millis() as u64,
                    };
                    encode(&ack, ContentType::Protobuf).expect("encode")
                })
            }
            SysKind::LeaseRenew => {
                seen.lock().unwrap().renewals.push(now);
                answering.load(Ordering::SeqCst).then(|| {
                    encode(
                        &lease_reply(grant(&address, &worker, epoch)),
                        ContentType::Protobuf,
                    )
                    .expect("encode")
                })
            }
            SysKind::BlobCommit => answering.load(Ordering::SeqCst).then(|| {
                encode(
                    &lease_reply(grant(&address, &worker, epoch)),
                    ContentType::Protobuf,
                )
                .expect("encode")
            }),
            SysKind::LeaseRelease => {
                let release: internal::LeaseRelease =
                    decode(&message.payload, ct).expect("release");
                seen.lock().unwrap().releases.push((now, release.reason));
                let mut ended = grant(&address, &worker, epoch);
                ended.expires_at = None;
                Some(encode(&lease_reply(ended), ContentType::Protobuf).expect("encode"))
            }
            _ => None,
        };
        let (Some(payload), Some(reply_to)) = (reply, message.reply) else {
            continue;
        };
        if !matches!(kind, SysKind::LeaseRelease) {
            seen.lock().unwrap().last_answer = Some(Instant::now());
        }
        client
            .publish_with_headers(reply_to, headers(), payload.into())
            .await
            .expect("answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_closes_at_the_lease_deadline_while_a_renewal_hangs() {
    let nats = start_nats().await;
    let sim = simulator_with_phone(SimConfig::default()).await;
    let blobs = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn BlobStore> = Arc::new(FsBlobStore::new(blobs.path()).expect("blob dir"));
    let vault = Arc::new(SessionVault::new(
        store,
        Arc::new(Keyring::new(MasterKey::from_bytes([7; 32]))),
    ));

    let worker_id = WorkerId::new("deadline-w1").unwrap();
    let address = SessionAddress::new("acme", "deadline").unwrap();
    let epoch = 1;
    let mut config = WorkerConfig::new(worker_id.clone());
    config.heartbeat_interval = Duration::from_millis(300);
    // A renewal that is never answered hangs this long: much longer than the trust.
    config.request_timeout = Duration::from_secs(5);
    config.pacing.renew_every = Duration::from_millis(700);
    config.driver = config_for(&sim, "deadline");

    let coordinator = async_nats::connect(&nats.url).await.expect("connect");
    let answering = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = tokio::spawn(fake_coordinator(
        coordinator.clone(),
        worker_id.clone(),
        address.clone(),
        epoch,
        Arc::clone(&answering),
        Arc::clone(&seen),
    ));
    // Every event of the session, with the time it arrived.
    let mut event_sub = coordinator
        .subscribe(subject::session_events(&address))
        .await
        .expect("subscribe to events");
    let events: Arc<Mutex<Vec<(Instant, v1::SessionEvent)>>> = Arc::default();
    let (qr_tx, mut qr_rx) = tokio::sync::mpsc::unbounded_channel();
    let (working_tx, mut working_rx) = tokio::sync::mpsc::unbounded_channel();
    let event_task = tokio::spawn({
        let events = Arc::clone(&events);
        async move {
            while let Some(message) = event_sub.next().await {
                let event = decode_event_message(&message).expect("a valid event");
                match &event.payload {
                    Some(Payload::Qr(qr)) => {
                        let _ = qr_tx.send(qr.code.clone());
                    }
                    Some(Payload::Status(s)) if s.status == SessionStatus::Working as i32 => {
                        let _ = working_tx.send(());
                    }
                    _ => {}
                }
                events.lock().unwrap().push((Instant::now(), event));
            }
        }
    });
    coordinator.flush().await.expect("flush");

    let worker = RunningWorker::start(config, &nats.url, vault).await;

    // The grant, then link the device by QR and wait until it works.
    let payload = encode(&grant(&address, &worker_id, epoch), ContentType::Protobuf).unwrap();
    let granted = coordinator
        .request_with_headers(
            SysSubject::new(worker_id.clone(), SysKind::LeaseGrant).to_string(),
            headers(),
            payload.into(),
        )
        .await
        .expect("the worker answers the grant");
    let reply: internal::LeaseReply = decode(&granted.payload, ContentType::Protobuf).unwrap();
    assert!(
        matches!(
            reply.outcome,
            Some(internal::lease_reply::Outcome::Lease(_))
        ),
        "grant refused: {reply:?}"
    );
    let qr = support::guard("the first QR", qr_rx.recv())
        .await
        .expect("a QR");
    let device = sim.scan_qr(PHONE, &qr).await.expect("the phone links");
    support::guard("WORKING", working_rx.recv())
        .await
        .expect("WORKING");
    let device = device.to_string();
    support::eventually("the device's socket", || {
        sim.counters().live_sockets.get(&device).copied() == Some(1)
    })
    .await;
    // Heartbeats and renewals keep it up for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sim.counters().live_sockets.get(&device).copied(),
        Some(1),
        "the session stays up while the coordinator answers"
    );

    // The coordinator goes silent.
    answering.store(false, Ordering::SeqCst);
    let silent_from = Instant::now();
    let closed_at = support::guard("the socket to close", async {
        loop {
            if sim
                .counters()
                .live_sockets
                .get(&device)
                .copied()
                .unwrap_or(0)
                == 0
            {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Let anything late show up, and the task release its lease and leave the heartbeats.
    support::guard("the lease to leave the heartbeats", async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let s = seen.lock().unwrap();
            if s.heartbeats
                .last()
                .is_some_and(|(at, listed)| *at > closed_at && !listed)
            {
                return;
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seen = seen.lock().unwrap().clone();
    let last_answer = seen.last_answer.expect("answers were given");
    assert!(last_answer <= silent_from + Duration::from_millis(50));
    let trust_end = last_answer + VALID_FOR;
    let renewal_in_flight = seen
        .renewals
        .iter()
        .any(|at| *at > last_answer && *at < closed_at);
    eprintln!(
        "silent at +0 ms; last answer {} ms before; socket closed at +{} ms; the coordinator's trust ends at +{} ms; renewal unanswered when it closed: {renewal_in_flight}",
        silent_from.saturating_duration_since(last_answer).as_millis(),
        closed_at.duration_since(silent_from).as_millis(),
        trust_end.saturating_duration_since(silent_from).as_millis(),
    );
    assert!(
        renewal_in_flight,
        "the test needs a renewal in flight when the deadline comes (renewals: {:?})",
        seen.renewals
            .iter()
            .map(|at| at.saturating_duration_since(silent_from))
            .collect::<Vec<_>>()
    );
    assert!(
        closed_at <= trust_end,
        "the socket outlived the lease trust by {} ms",
        closed_at.duration_since(trust_end).as_millis()
    );
    // The worker stops trusting the lease 0.5 s before the coordinator would move it.
    assert!(
        closed_at >= last_answer + VALID_FOR - Duration::from_millis(600),
        "the socket closed long before the deadline ({} ms after the last answer)",
        closed_at.duration_since(last_answer).as_millis()
    );
    let late: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at > trust_end)
        .map(|(_, e)| format!("{:?}", e.payload))
        .collect();
    assert!(
        late.is_empty(),
        "events published after the trust ended: {late:?}"
    );
    // Heartbeats list the lease as long as its socket may be open.
    let omitted_early: Vec<u128> = seen
        .heartbeats
        .iter()
        .filter(|(at, listed)| *at < closed_at && !listed)
        .filter(|(at, _)| seen.heartbeats.iter().any(|(first, l)| *l && first < at))
        .map(|(at, _)| closed_at.duration_since(*at).as_millis())
        .collect();
    assert!(
        omitted_early.is_empty(),
        "heartbeats omitted the lease while its socket was open (ms before it closed): {omitted_early:?}"
    );
    // The lapsed lease is handed back once the socket is closed (the simulator notices
    // the closed TCP connection a little after the worker dropped it: hence the slack).
    let (released_at, reason) = *seen.releases.first().expect("the lease was released");
    assert!(
        released_at + Duration::from_millis(100) >= closed_at,
        "released {} ms before the simulator saw the socket close",
        closed_at.duration_since(released_at).as_millis()
    );
    assert_eq!(reason, ReasonCode::LeaseLost as i32);
    let counters = sim.counters();
    assert!(counters.max_live_sockets_per_device <= 1, "{counters:?}");
    assert_eq!(counters.replaced_sent, 0);

    worker.stop().await;
    fake.abort();
    event_task.abort();
    sim.shutdown().await;
    drop(nats);
}

/// A blob store outage keeps the lease: the session says `BLOB_STORE_UNAVAILABLE` once,
/// retries, starts as soon as the store answers, and hands the lease back with that
/// reason (not `CONNECTION_LOST`) only after the blob wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_blob_store_keeps_the_lease_until_the_blob_wait_ends() {
    let nats = start_nats().await;
    let sim = simulator_with_phone(SimConfig::default()).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let blob_dir = tmp.path().join("blobs");
    std::fs::create_dir(&blob_dir).unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(FsBlobStore::new(&blob_dir).expect("blob dir"));
    let vault = Arc::new(SessionVault::new(
        store,
        Arc::new(Keyring::new(MasterKey::from_bytes([7; 32]))),
    ));
    // The store is down: its directory is a file.
    let store_down = |down: bool| {
        if down {
            std::fs::remove_dir_all(&blob_dir).unwrap();
            std::fs::write(&blob_dir, b"down").unwrap();
        } else {
            std::fs::remove_file(&blob_dir).unwrap();
            std::fs::create_dir(&blob_dir).unwrap();
        }
    };
    store_down(true);

    let worker_id = WorkerId::new("outage-w1").unwrap();
    let gives_up = SessionAddress::new("acme", "outage1").unwrap();
    let recovers = SessionAddress::new("acme", "outage2").unwrap();
    let blob_wait = Duration::from_millis(2500);
    let mut config = WorkerConfig::new(worker_id.clone());
    config.heartbeat_interval = Duration::from_millis(300);
    config.request_timeout = Duration::from_secs(2);
    config.pacing.renew_every = Duration::from_millis(700);
    config.pacing.blob_wait = blob_wait;
    config.driver = config_for(&sim, "outage");

    let coordinator = async_nats::connect(&nats.url).await.expect("connect");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = tokio::spawn(fake_coordinator(
        coordinator.clone(),
        worker_id.clone(),
        gives_up.clone(),
        1,
        Arc::new(AtomicBool::new(true)),
        Arc::clone(&seen),
    ));
    let mut event_sub = coordinator
        .subscribe("wafleet.v1.acme.evt.session.*.*")
        .await
        .expect("subscribe to events");
    let events: Arc<Mutex<Vec<(Instant, v1::SessionEvent)>>> = Arc::default();
    let event_task = tokio::spawn({
        let events = Arc::clone(&events);
        async move {
            while let Some(message) = event_sub.next().await {
                let event = decode_event_message(&message).expect("a valid event");
                events.lock().unwrap().push((Instant::now(), event));
            }
        }
    });
    coordinator.flush().await.expect("flush");
    let worker = RunningWorker::start(config, &nats.url, vault).await;

    let offer = |address: &SessionAddress| {
        let payload = encode(&grant(address, &worker_id, 1), ContentType::Protobuf).unwrap();
        coordinator.request_with_headers(
            SysSubject::new(worker_id.clone(), SysKind::LeaseGrant).to_string(),
            headers(),
            payload.into(),
        )
    };
    let waiting = (
        SessionStatus::Starting as i32,
        ReasonCode::BlobStoreUnavailable as i32,
    );
    let statuses = |session: &str| -> Vec<(i32, i32)> {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.session == session)
            .filter_map(|(_, e)| match &e.payload {
                Some(Payload::Status(s)) => Some((s.status, s.reason)),
                _ => None,
            })
            .collect()
    };
    let shows_qr = |session: &str| {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|(_, e)| e.session == session && matches!(e.payload, Some(Payload::Qr(_))))
    };

    // An outage shorter than the blob wait: the session waits, then starts.
    offer(&recovers).await.expect("the grant is answered");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        statuses("outage2")
            .iter()
            .filter(|s| **s == waiting)
            .count(),
        1,
        "{:?}",
        statuses("outage2")
    );
    assert!(!shows_qr("outage2"));
    store_down(false);
    support::eventually("the session to start once the store answers", || {
        shows_qr("outage2")
    })
    .await;
    assert!(
        seen.lock().unwrap().releases.is_empty(),
        "the lease was kept"
    );

    // A longer one: the lease goes back after the blob wait, with the store's reason.
    store_down(true);
    let granted_at = Instant::now();
    offer(&gives_up).await.expect("the grant is answered");
    support::guard("the release", async {
        while seen.lock().unwrap().releases.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let releases = seen.lock().unwrap().releases.clone();
    assert_eq!(releases.len(), 1, "only the session that gave up");
    let (released_at, reason) = releases[0];
    assert_eq!(reason, ReasonCode::BlobStoreUnavailable as i32);
    let waited = released_at.duration_since(granted_at);
    assert!(
        waited >= blob_wait && waited <= blob_wait + Duration::from_millis(1500),
        "released after {waited:?} (blob wait {blob_wait:?})"
    );
    assert_eq!(
        statuses("outage1")
            .iter()
            .filter(|s| **s == waiting)
            .count(),
        1,
        "{:?}",
        statuses("outage1")
    );
    assert!(!shows_qr("outage1"));

    worker.stop().await;
    fake.abort();
    event_task.abort();
    sim.shutdown().await;
    drop(nats);
}
