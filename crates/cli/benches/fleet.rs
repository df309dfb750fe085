//! Fleet benchmarks on the real services (`eval "$(bash scripts/services.sh up)"`): a
//! private nats-server, PostgreSQL, SeaweedFS S3, the simulator in-process, and
//! `wafleet coordinator` / `wafleet worker` child processes (the harness of
//! `tests/fleet_support`).
//!
//! 1. create → first QR: `create` then `start` over the bus until the first `qr` event the
//!    backend receives; 50 one after another, then 50 at once.
//! 2. Failover: K sessions (50, then 500) linked on worker A (capacity K), worker B started,
//!    A killed with SIGKILL; per session, kill → its first event at a higher epoch (the
//!    grant reached B and B started it) and kill → `WORKING` on B. Fails unless every
//!    session came back without a QR, with no device ever holding two live sockets and no
//!    `replaced` sent.
//! 3. The peer, same run, same simulator: stock Baileys 7.0.0-rc14 in one node process
//!    (`tests/interop/oracle/restart-bench.mjs`) with multi-file auth state, SIGKILLed and
//!    started again (what a single-process gateway does), for 1 session (5 times) and for
//!    50 sessions; and Baileys' start → first QR.
//!
//! `cargo bench -p wafleet --bench fleet`. Exits non-zero if a check fails. Results are in
//! docs/BENCHMARKS.md.

#[path = "../tests/fleet_support/mod.rs"]
mod fleet_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleet_support::{
    eventually, Fleet, Seen, HEARTBEAT_MS, LEASE_TTL_S, MISSED_HEARTBEATS, RENEW_MS,
};
use futures_util::StreamExt;
use wafleet_bus_schema::v1::session_event::Payload;
use wafleet_bus_schema::v1::SessionStatus;

/// How many links run at once when linking the failover sessions.
const LINK_CONCURRENCY: usize = 25;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(label: &str, mut values: Vec<Duration>) {
    values.sort();
    if values.is_empty() {
        println!("  {label:<44} (no samples)");
        return;
    }
    println!(
        "  {label:<44} n {:>3}  p50 {:>9.1} ms  p99 {:>9.1} ms  max {:>9.1} ms",
        values.len(),
        ms(percentile(&values, 50.0)),
        ms(percentile(&values, 99.0)),
        ms(*values.last().expect("one")),
    );
}

/// `wafleet worker` as the harness starts it, but logging at `info` (the harness logs the
/// session worker at `trace`, which costs CPU in a benchmark).
async fn start_worker(fleet: &mut Fleet, id: &str, capacity: u32) {
    fleet.worker_log = Some("info".into());
    fleet.start_worker(id, capacity).await;
}

fn first_qr(fleet: &Fleet, session: &str) -> Option<Seen> {
    fleet
        .events
        .lock()
        .expect("events")
        .iter()
        .find(|s| s.event.session == session && s.kind() == "qr")
        .cloned()
}

fn latest_qr(fleet: &Fleet, session: &str) -> Option<String> {
    fleet
        .events
        .lock()
        .expect("events")
        .iter()
        .rev()
        .find_map(|s| match &s.event.payload {
            Some(Payload::Qr(q)) if s.event.session == session => Some(q.code.clone()),
            _ => None,
        })
}

fn is_working(s: &Seen) -> bool {
    s.status().map(|x| x.0) == Some(SessionStatus::Working)
}

/// create + start, then until the first QR the backend received.
async fn create_to_qr(fleet: &Fleet, session: &str) -> Duration {
    let sent = Instant::now();
    fleet.create_and_start(session).await;
    let qr = eventually(Duration::from_secs(30), &format!("{session} QR"), || {
        let qr = first_qr(fleet, session);
        async move { qr }
    })
    .await;
    qr.at.duration_since(sent)
}

/// Scans the newest QR of `session` with a new phone until the session is WORKING.
async fn link(fleet: &Fleet, session: &str, phone: &str) {
    fleet.sim.add_phone(phone).expect("add phone");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_error = String::from("no QR yet");
    loop {
        if Instant::now() > deadline {
            let seen: Vec<String> = fleet
                .events
                .lock()
                .expect("events")
                .iter()
                .filter(|s| s.event.session == session)
                .map(|s| {
                    format!(
                        "{} {:?} e{} {}",
                        s.kind(),
                        s.status(),
                        s.event.epoch,
                        s.event.worker_id
                    )
                })
                .collect();
            panic!(
                "{session} was not linked: {last_error}; events {seen:?}\n{}",
                fleet.logs()
            );
        }
        if let Some(code) = latest_qr(fleet, session) {
            match fleet.sim.scan_qr(phone, &code).await {
                Ok(_) => break,
                Err(e) => last_error = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(
        Duration::from_secs(120),
        &format!("{session} WORKING"),
        || {
            let working = fleet
                .events
                .lock()
                .expect("events")
                .iter()
                .any(|s| s.event.session == session && is_working(s));
            async move { working.then_some(()) }
        },
    )
    .await;
}

/// Every session's highest epoch so far.
fn epochs(fleet: &Fleet) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for s in fleet.events.lock().expect("events").iter() {
        let e = out.entry(s.event.session.clone()).or_default();
        *e = (*e).max(s.event.epoch);
    }
    out
}

/// Links `sessions` on worker A, moves them to B by killing A, and reports.
async fn failover(fleet: &mut Fleet, sessions: &[String], phone_prefix: &str) {
    let k = sessions.len();
    let a = format!("w-a{k}");
    let b = format!("w-b{k}");
    start_worker(fleet, &a, k as u32).await;
    let linking = Instant::now();
    let created = AtomicUsize::new(0);
    let linked = AtomicUsize::new(0);
    {
        let fleet = &*fleet;
        futures_util::stream::iter(sessions.iter().enumerate())
            .for_each_concurrent(LINK_CONCURRENCY, |(i, s)| {
                let (created, linked, linking) = (&created, &linked, &linking);
                async move {
                    fleet.create_and_start(s).await;
                    created.fetch_add(1, Ordering::Relaxed);
                    link(fleet, s, &format!("{phone_prefix}{i:05}")).await;
                    let n = linked.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 100 == 0 {
                        println!(
                            "  {n} linked after {:.1} s",
                            linking.elapsed().as_secs_f64()
                        );
                    }
                }
            })
            .await;
    }
    // The 812 prekeys of every device are on the server, so every blob holds them.
    let prekeyed = |fleet: &Fleet| {
        fleet
            .sim
            .counters()
            .prekeys_stored
            .values()
            .filter(|n| **n >= 812)
            .count()
    };
    eventually(Duration::from_secs(120), "all prekeys uploaded", || {
        let n = prekeyed(fleet);
        async move { (n >= k).then_some(()) }
    })
    .await;
    println!(
        "{k} sessions linked on {a} ({LINK_CONCURRENCY} at a time) in {:.1} s",
        linking.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holders: Vec<(String, String)> = {
        let events = fleet.events.lock().expect("events");
        sessions
            .iter()
            .map(|s| {
                let w = events
                    .iter()
                    .rev()
                    .find(|e| e.event.session == *s && is_working(e))
                    .map(|e| e.event.worker_id.clone())
                    .unwrap_or_default();
                (s.clone(), w)
            })
            .collect()
    };
    assert!(holders.iter().all(|(_, w)| *w == a), "{holders:?}");
    let before = epochs(fleet);
    start_worker(fleet, &b, k as u32).await;
    let killed_at = Instant::now();
    fleet.kill_worker(&a);
    let back = |fleet: &Fleet| {
        let events = fleet.events.lock().expect("events");
        let mut first: HashMap<&str, Instant> = HashMap::new();
        let mut working: HashMap<&str, Instant> = HashMap::new();
        for e in events.iter() {
            let s = e.event.session.as_str();
            if e.event.epoch <= before.get(s).copied().unwrap_or(u64::MAX) {
                continue;
            }
            first.entry(s).or_insert(e.at);
            if e.event.worker_id == b && is_working(e) {
                working.entry(s).or_insert(e.at);
            }
        }
        let out: Vec<(Duration, Duration)> = sessions
            .iter()
            .filter_map(|s| {
                let w = working.get(s.as_str())?;
                Some((
                    first[s.as_str()].duration_since(killed_at),
                    w.duration_since(killed_at),
                ))
            })
            .collect();
        out
    };
    let samples = eventually(
        Duration::from_secs(180),
        &format!("all {k} WORKING on {b}"),
        || {
            let samples = back(fleet);
            async move { (samples.len() == k).then_some(samples) }
        },
    )
    .await;
    // Quiet for a moment: a late QR or a second socket would show up here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let qr_after = fleet
        .events
        .lock()
        .expect("events")
        .iter()
        .filter(|e| e.at > killed_at && e.kind() == "qr")
        .count();
    let counters = fleet.sim.counters();
    println!(
        "failover of {k} sessions, {a} SIGKILLed, {b} takes them (QR events after the kill: \
         {qr_after}; max live sockets per device {}; replaced sent {}):",
        counters.max_live_sockets_per_device, counters.replaced_sent
    );
    report(
        "kill -> first event at the new epoch",
        samples.iter().map(|s| s.0).collect(),
    );
    report(
        "first new-epoch event -> WORKING",
        samples.iter().map(|s| s.1.saturating_sub(s.0)).collect(),
    );
    report(
        "kill -> WORKING on B",
        samples.iter().map(|s| s.1).collect(),
    );
    let all = samples.iter().map(|s| s.1).max().unwrap_or_default();
    println!("  all {k} back {:.1} ms after the kill", ms(all));
    let coordinator = fleet.coordinators[0].log_text();
    let ended = coordinator
        .lines()
        .filter(|l| l.contains("lease ended") && l.contains(&a))
        .count();
    println!("  coordinator: {ended} leases ended for the dead worker");
    assert_eq!(qr_after, 0, "QR events after the kill");
    assert_eq!(counters.replaced_sent, 0, "{counters:?}");
    assert!(
        counters.max_live_sockets_per_device <= 1,
        "a device had two live sockets: {counters:?}"
    );
    fleet.kill_worker(&b);
}

/// One node process of the oracle; lines arrive with the time they were read.
struct Node {
    child: std::process::Child,
    spawned: Instant,
    lines: mpsc::Receiver<(Instant, serde_json::Value)>,
}

impl Node {
    fn spawn(oracle: &std::path::Path, args: &[&str]) -> Node {
        let spawned = Instant::now();
        let mut child = Command::new("node")
            .current_dir(oracle)
            .arg("restart-bench.mjs")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        Node {
            child,
            spawned,
            lines,
        }
    }

    async fn next(&self) -> (Instant, serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match self.lines.try_recv() {
                Ok(line) => return line,
                Err(mpsc::TryRecvError::Disconnected) => panic!("the node process ended"),
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "node: nothing for 120 s");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    fn kill(mut self) -> Instant {
        let at = Instant::now();
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
        at
    }
}

#[derive(Default)]
struct PeerSamples {
    to_qr: Vec<Duration>,
    kill_to_open: Vec<Duration>,
    spawn_to_open: Vec<Duration>,
    node_start: Vec<Duration>,
    script_to_open: Vec<Duration>,
    all_open: Vec<Duration>,
}

/// Links `sessions` Baileys sessions in one node process, SIGKILLs it, starts another on
/// the same auth state and times the logins.
async fn baileys_restart(
    fleet: &Fleet,
    oracle: &std::path::Path,
    sessions: usize,
    phone_prefix: &str,
    out: &mut PeerSamples,
) {
    let auth = tempfile::tempdir().expect("auth dir");
    let auth_dir = auth.path().to_str().expect("utf-8 path").to_string();
    let ws = fleet.sim.ws_url();
    let root = hex::encode(fleet.sim.root_public_key());
    let n = sessions.to_string();
    let linker = Node::spawn(oracle, &["link", &ws, &root, &auth_dir, &n]);
    loop {
        let (_, v) = linker.next().await;
        match v["event"].as_str() {
            Some("qr") => {
                let i = v["session"].as_u64().expect("session");
                out.to_qr.push(Duration::from_secs_f64(
                    v["to_qr_ms"].as_f64().expect("ms") / 1e3,
                ));
                let phone = format!("{phone_prefix}{i:05}");
                fleet.sim.add_phone(&phone).expect("phone");
                fleet
                    .sim
                    .scan_qr(&phone, v["qr"].as_str().expect("qr"))
                    .await
                    .expect("scan the Baileys QR");
            }
            Some("linked") => break,
            _ => {}
        }
    }
    let killed_at = linker.kill();
    let login = Node::spawn(oracle, &["login", &ws, &root, &auth_dir, &n]);
    let mut opened = 0;
    while opened < sessions {
        let (at, v) = login.next().await;
        match v["event"].as_str() {
            Some("started") => out
                .node_start
                .push(Duration::from_secs_f64(v["ms"].as_f64().expect("ms") / 1e3)),
            Some("open") => {
                opened += 1;
                out.kill_to_open.push(at.duration_since(killed_at));
                out.spawn_to_open.push(at.duration_since(login.spawned));
                out.script_to_open
                    .push(Duration::from_secs_f64(v["ms"].as_f64().expect("ms") / 1e3));
            }
            Some("qr") => panic!("Baileys showed a QR after the restart: {v}"),
            _ => {}
        }
    }
    out.all_open.push(Instant::now().duration_since(killed_at));
    login.kill();
}

async fn peer(fleet: &Fleet) {
    let oracle =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/oracle");
    if !oracle.join("node_modules/baileys").exists() {
        println!("Baileys: not installed (bash scripts/install-oracle.sh); no peer measured");
        return;
    }
    let replaced = fleet.sim.counters().replaced_sent;
    for (label, sessions, rounds, prefix) in [
        ("1 session, 5 restarts", 1, 5, "1666"),
        ("50 sessions in one process, 1 restart", 50, 1, "1667"),
    ] {
        let mut samples = PeerSamples::default();
        for round in 0..rounds {
            baileys_restart(
                fleet,
                &oracle,
                sessions,
                &format!("{prefix}{round}"),
                &mut samples,
            )
            .await;
        }
        println!("Baileys 7.0.0-rc14 restart, {label} (SIGKILL, new node process, saved auth):");
        report("start -> first QR (link, one at a time)", samples.to_qr);
        report("node start -> script running", samples.node_start);
        report("process start -> open", samples.spawn_to_open);
        report("kill -> open", samples.kill_to_open);
        report("kill -> all open", samples.all_open);
    }
    let counters = fleet.sim.counters();
    assert_eq!(counters.replaced_sent, replaced, "{counters:?}");
    assert!(
        counters.max_live_sockets_per_device <= 1,
        "a device had two live sockets: {counters:?}"
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        println!(
            "pacing: heartbeat {HEARTBEAT_MS} ms x {MISSED_HEARTBEATS} missed = dead after {} ms; \
             lease TTL {LEASE_TTL_S} s; worker renew {RENEW_MS} ms",
            HEARTBEAT_MS * MISSED_HEARTBEATS as u64
        );
        let mut fleet = Fleet::start().await;
        start_worker(&mut fleet, "w-qr", 200).await;
        // Warm-up (not reported).
        for i in 0..3 {
            create_to_qr(&fleet, &format!("warm{i}")).await;
        }
        let mut one_by_one = Vec::new();
        for i in 0..50 {
            one_by_one.push(create_to_qr(&fleet, &format!("q{i:02}")).await);
        }
        let names: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
        let at_once =
            futures_util::future::join_all(names.iter().map(|s| create_to_qr(&fleet, s))).await;
        println!("create -> first QR event (create + start over the bus, one worker):");
        report("50 one after another", one_by_one);
        report("50 at once", at_once);
        fleet.kill_worker("w-qr");
        fleet.finish().await;

        // A fresh fleet for each failover, so no other session competes for the workers.
        let mut fleet = Fleet::start().await;
        let sessions: Vec<String> = (0..50).map(|i| format!("f{i:02}")).collect();
        failover(&mut fleet, &sessions, "15551").await;
        peer(&fleet).await;
        fleet.finish().await;

        let mut fleet = Fleet::start().await;
        let sessions: Vec<String> = (0..500).map(|i| format!("g{i:03}")).collect();
        failover(&mut fleet, &sessions, "15552").await;
        fleet.finish().await;
        println!("bench done in {:.1} s", started.elapsed().as_secs_f64());
    });
}
