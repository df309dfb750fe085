//! Messaging throughput and latency on loopback against the project's simulator. wafleet
//! sessions (the real driver with a filesystem store: session file plus journal) are
//! linked to simulator accounts in pairs; in each pair A sends texts to B, and B receives
//! them as decrypted `DriverEvent::Message`s. Measured: messages/s end to end (first send
//! to last decrypted message), per-message latency from the `send_text` call to B's
//! decrypted event (p50/p99/max), and the CPU time of the sessions' runtime (threads
//! named "wafleet") apart from the simulator's ("sim"). Runs: one pair (burst, then paced
//! at 1,000 msg/s), then `MSG_BENCH_SESSIONS` (default 100) sessions in this process as 50
//! pairs (burst, then paced at 1,000 msg/s in all). Then stock Baileys on the same
//! simulator does the same (`tests/interop/oracle/msg-bench.mjs`), if the oracle is
//! installed. `MSG_BENCH_N` (default 1,000) messages per run.
//!
//! `cargo bench -p wafleet-session-worker --bench messaging` (release build). Results and
//! the command are recorded in docs/BENCHMARKS.md.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::time::timeout;
use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverControl, DriverEvent, FsSessionStore, ServerConfig, SessionDriver,
    SessionName, StoreStats,
};
use wafleet_sim::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(20);

/// Name prefixes of the threads of the two runtimes: the wafleet sessions (and this
/// bench's sender and receiver tasks) run on one, the simulator on the other, so the CPU
/// time of each is measured apart.
const CLIENT_THREADS: &str = "wafleet";
const SIM_THREADS: &str = "sim";

/// A session linked to a fresh simulator account, once it is logged in and has uploaded
/// its prekeys (a peer that fetched its bundle before that would leave it out).
async fn linked(
    sim: &Simulator,
    dir: &std::path::Path,
    phone: &str,
    stores: &mut Vec<FsSessionStore>,
) -> SessionDriver {
    sim.add_phone(phone).expect("phone");
    let name = SessionName::parse(&format!("bench-{phone}")).expect("name");
    let config = DriverConfig {
        label: name.to_string(),
        server: ServerConfig {
            url: sim.ws_url(),
            root: RootKey::custom(sim.root_public_key()),
        },
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..DriverConfig::default()
    };
    let store = FsSessionStore::new(dir, &name);
    stores.push(store.clone());
    let mut driver = SessionDriver::start(config, Arc::new(store)).expect("driver");
    let (mut ready, mut keys_up) = (false, false);
    while !(ready && keys_up) {
        match timeout(WAIT, driver.next_event())
            .await
            .expect("event in time")
            .expect("driver running")
        {
            DriverEvent::Qr { code, .. } => {
                sim.scan_qr(phone, code.expose()).await.expect("scan");
            }
            DriverEvent::Ready { .. } => ready = true,
            DriverEvent::PreKeysUploaded { .. } => keys_up = true,
            DriverEvent::Failed { reason, detail } => panic!("link: {reason}: {detail}"),
            _ => {}
        }
    }
    driver
}

/// One sender and one receiver: `a` sends to `b` (the number `to`).
struct Pair {
    a: DriverControl,
    b: SessionDriver,
    to: String,
}

/// In every pair, A sends `n` texts to B; per pair, `concurrency` tasks each send one
/// after the other, or, with `rate` set (per pair), every message is started at its own
/// instant of a fixed schedule; the pairs' schedules interleave, so that all together the
/// messages are evenly spaced at pairs × rate msg/s. Returns the pairs once every B got all its messages (or
/// stalled).
async fn run(
    label: &str,
    stores: &[FsSessionStore],
    pairs: Vec<Pair>,
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> Vec<Pair> {
    let tag = label.replace(' ', "_");
    let count = pairs.len();
    let sent: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..n * count).map(|_| Mutex::new(None)).collect());
    let skipped = Arc::new(AtomicUsize::new(0));
    let cpu = (
        support::threads_cpu(CLIENT_THREADS),
        support::threads_cpu(SIM_THREADS),
    );
    let written = store_stats(stores);
    let started = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (p, Pair { a, b, to }) in pairs.into_iter().enumerate() {
        let prefix = format!("{tag}.{p} ");
        receivers.push((
            a.clone(),
            to.clone(),
            tokio::spawn(receive(b, prefix.clone(), n)),
        ));
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..concurrency {
            let (control, to, prefix) = (a.clone(), to.clone(), prefix.clone());
            let (sent, skipped, next) =
                (Arc::clone(&sent), Arc::clone(&skipped), Arc::clone(&next));
            senders.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if let Some(rate) = rate {
                        let slot = i as f64 + p as f64 / count as f64;
                        let due = started + Duration::from_secs_f64(slot / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    *sent[p * n + i].lock().expect("lock") = Some(Instant::now());
                    match timeout(WAIT, control.send_text(&to, &format!("{prefix}{i}"))).await {
                        Ok(result) => {
                            let acked = result.expect("send acked");
                            skipped.fetch_add(acked.skipped.len(), Ordering::Relaxed);
                        }
                        Err(_) => {
                            println!(
                                "  STALLED: send_text of message {i} not answered in {WAIT:?}"
                            );
                            break;
                        }
                    }
                }
            }));
        }
    }
    for s in senders {
        s.await.expect("sender task");
    }
    let acked = started.elapsed();
    let mut back = Vec::new();
    let mut latencies = Vec::new();
    let mut last: Option<Instant> = None;
    for (p, (a, to, receiver)) in receivers.into_iter().enumerate() {
        let (b, received) = receiver.await.expect("receiver task");
        for (i, at) in received.iter().enumerate() {
            let Some(at) = *at else { continue };
            last = last.max(Some(at));
            let sent_at = sent[p * n + i].lock().expect("lock").expect("sent");
            latencies.push(at - sent_at);
        }
        back.push(Pair { a, b, to });
    }
    let total = latencies.len();
    let Some(last) = last else {
        println!("wafleet {label}: nothing received");
        return back;
    };
    let wall = last - started;
    let client_cpu = support::threads_cpu(CLIENT_THREADS) - cpu.0;
    let sim_cpu = support::threads_cpu(SIM_THREADS) - cpu.1;
    println!(
        "wafleet {label}: {count} pair(s), {total} of {} messages received, {concurrency} in flight per pair{}, all acked {:.2} s, all received {:.2} s -> {:.0} msg/s; devices skipped: {}",
        n * count,
        rate.map(|r| format!(", paced {r:.0} msg/s per pair")).unwrap_or_default(),
        acked.as_secs_f64(),
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64(),
        skipped.load(Ordering::Relaxed),
    );
    println!(
        "  CPU: wafleet sessions {:.2} s -> {:.0} msgs per CPU-second (each sent and received); simulator {:.2} s",
        client_cpu.as_secs_f64(),
        total as f64 / client_cpu.as_secs_f64(),
        sim_cpu.as_secs_f64(),
    );
    let now = store_stats(stores);
    let per = |x: u64, y: u64| (x - y) as f64 / total as f64;
    println!(
        "  store (all sessions, per message): {:.3} journal appends, {:.3} whole saves; {:.0} bytes appended, {:.0} bytes of whole saves",
        per(now.appends, written.appends),
        per(now.whole_saves, written.whole_saves),
        per(now.appended_bytes, written.appended_bytes),
        per(now.whole_bytes, written.whole_bytes),
    );
    support::report("send_text -> B decrypted", 30, latencies);
    back
}

/// What the stores wrote so far, summed.
fn store_stats(stores: &[FsSessionStore]) -> StoreStats {
    stores
        .iter()
        .map(FsSessionStore::stats)
        .fold(StoreStats::default(), |a, b| StoreStats {
            appends: a.appends + b.appends,
            appended_bytes: a.appended_bytes + b.appended_bytes,
            whole_saves: a.whole_saves + b.whole_saves,
            whole_bytes: a.whole_bytes + b.whole_bytes,
        })
}

/// B's side: the arrival instant of each of its `n` messages (texts `<prefix><i>`), until
/// all arrived or none came for [`WAIT`].
async fn receive(
    mut b: SessionDriver,
    prefix: String,
    n: usize,
) -> (SessionDriver, Vec<Option<Instant>>) {
    let mut received: Vec<Option<Instant>> = vec![None; n];
    let mut count = 0;
    while count < n {
        let Ok(event) = timeout(WAIT, b.next_event()).await else {
            println!("  STALLED: {count} of {n} messages reached B; none for {WAIT:?}");
            break;
        };
        match event.expect("driver running") {
            DriverEvent::Message(m) => {
                let at = Instant::now();
                let index = m
                    .text
                    .as_deref()
                    .and_then(|t| t.strip_prefix(&prefix))
                    .and_then(|i| i.parse::<usize>().ok());
                if let Some(slot) = index.and_then(|i| received.get_mut(i)) {
                    if slot.is_none() {
                        *slot = Some(at);
                        count += 1;
                    }
                }
            }
            DriverEvent::Undecryptable(u) => panic!("undecryptable: {u:?}"),
            DriverEvent::Failed { reason, detail } => panic!("receiver failed: {reason}: {detail}"),
            other => {
                if std::env::var_os("MSG_BENCH_DEBUG").is_some() {
                    eprintln!("B: {other:?}");
                }
            }
        }
    }
    (b, received)
}

/// Stock Baileys against the same simulator through its control API
/// (`tests/interop/oracle/msg-bench.mjs`), if the oracle is installed.
fn measure_baileys(sim: &Simulator, n: usize, concurrency: usize, prefix: &str) {
    let Some(stdout) = support::run_oracle(sim, "msg-bench.mjs", n, concurrency, prefix) else {
        return;
    };
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        if let Some(lat) = v["latencies_ms"].as_array() {
            let values = lat
                .iter()
                .map(|x| Duration::from_secs_f64(x.as_f64().expect("number") / 1e3))
                .collect();
            println!(
                "Baileys 7.0.0-rc14 {}: {} pair(s), {} messages, {} in flight per pair, all received {:.2} s -> {:.0} msg/s",
                v["label"].as_str().unwrap_or(""),
                v["pairs"],
                v["n"],
                v["concurrency"],
                v["wall_ms"].as_f64().unwrap_or(0.0) / 1e3,
                v["msg_per_s"].as_f64().unwrap_or(0.0)
            );
            let cpu_s = v["cpu_ms"].as_f64().unwrap_or(0.0) / 1e3;
            println!(
                "  CPU: Baileys process {cpu_s:.2} s -> {:.0} msgs per CPU-second (each sent and received)",
                v["n"].as_f64().unwrap_or(0.0) / cpu_s
            );
            support::report("sendMessage -> B upsert", 30, values);
        } else {
            println!("Baileys: {line}");
        }
    }
}

fn main() {
    let n: usize = std::env::var("MSG_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // 100 sessions in one process: 50 senders, 50 receivers, the same total; for Baileys
    // too (msg-bench.mjs reads the same variable).
    let sessions: usize = std::env::var("MSG_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    std::env::set_var("MSG_BENCH_SESSIONS", sessions.to_string());
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(name)
            .thread_keep_alive(Duration::from_secs(3600))
            .build()
            .expect("runtime")
    };
    let (client, server) = (runtime(CLIENT_THREADS), runtime(SIM_THREADS));
    let sim = Arc::new(
        server
            .block_on(Simulator::start(SimConfig {
                control_bind: Some(([127, 0, 0, 1], 0).into()),
                ..SimConfig::default()
            }))
            .expect("sim"),
    );
    client.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut stores = Vec::new();
        let a = linked(&sim, dir.path(), "15550000001", &mut stores).await;
        let b = linked(&sim, dir.path(), "15550000002", &mut stores).await;
        let one = vec![Pair {
            a: a.control(),
            b,
            to: "15550000002".into(),
        }];
        // Warm-up (sessions established, not reported).
        let one = run("warmup", &stores, one, 20, 1, None).await;
        println!("--- measured: one session sending, one receiving ---");
        let one = run("burst", &stores, one, n, 32, None).await;
        let one = run("paced", &stores, one, n, 64, Some(1000.0)).await;
        let mut fleet_stores = Vec::new();
        let mut senders = Vec::new();
        let mut many = Vec::new();
        for p in 0..sessions / 2 {
            let (from, to) = (format!("1556{p:07}"), format!("1557{p:07}"));
            let sender = linked(&sim, dir.path(), &from, &mut fleet_stores).await;
            let b = linked(&sim, dir.path(), &to, &mut fleet_stores).await;
            many.push(Pair {
                a: sender.control(),
                b,
                to,
            });
            senders.push(sender);
        }
        let pairs = many.len().max(1);
        let many = run("fleet warmup", &fleet_stores, many, 2, 1, None).await;
        println!("--- measured: {sessions} sessions in one process ---");
        let many = run("fleet burst", &fleet_stores, many, n / pairs, 8, None).await;
        let many = run(
            "fleet paced",
            &fleet_stores,
            many,
            n / pairs,
            8,
            Some(1000.0 / pairs as f64),
        )
        .await;
        for pair in many.into_iter().chain(one) {
            pair.b.finish().await;
        }
        for sender in senders {
            sender.finish().await;
        }
        a.finish().await;
        let peer = Arc::clone(&sim);
        tokio::task::spawn_blocking(move || measure_baileys(&peer, n, 32, "1666"))
            .await
            .expect("Baileys run");
    });
}
