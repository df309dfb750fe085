//! Messaging throughput and latency on loopback against the project's simulator: two
//! wafleet sessions (the real driver with a filesystem store), each linked to its own
//! simulator account; A sends N texts to B with many sends in flight; B receives them as
//! decrypted `DriverEvent::Message`s. Measured: messages/s end to end (first send to last
//! decrypted message) and per-message latency from the `send_text` call to B's decrypted
//! event (p50/p99/max). Then a paced run at 1,000 msg/s. Then stock Baileys on the same
//! simulator (`tests/interop/oracle/msg-bench.mjs`), if the oracle is installed.
//!
//! `cargo bench -p wafleet-session-worker --bench messaging` (release build). Results and
//! the command are recorded in docs/BENCHMARKS.md.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::time::timeout;
use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverEvent, FsSessionStore, ServerConfig, SessionDriver, SessionName,
};
use wafleet_sim::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(20);

async fn linked(sim: &Simulator, dir: &std::path::Path, phone: &str) -> SessionDriver {
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
    let store = Arc::new(FsSessionStore::new(dir, &name));
    let mut driver = SessionDriver::start(config, store).expect("driver");
    loop {
        match timeout(WAIT, driver.next_event())
            .await
            .expect("event in time")
            .expect("driver running")
        {
            DriverEvent::Qr { code, .. } => {
                sim.scan_qr(phone, code.expose()).await.expect("scan");
            }
            DriverEvent::Ready { .. } => return driver,
            DriverEvent::Failed { reason, detail } => panic!("link: {reason}: {detail}"),
            _ => {}
        }
    }
}

/// A sends `n` texts to `to`; `concurrency` tasks each send one after the other, or, with
/// `rate` set, every message is started at its own instant of a fixed schedule.
/// Returns B back once all `n` arrived.
async fn run(
    label: &str,
    a: &SessionDriver,
    mut b: SessionDriver,
    to: &str,
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> SessionDriver {
    let tag = label.replace(' ', "_");
    let sent: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..n).map(|_| Mutex::new(None)).collect());
    let receiver = {
        let tag = tag.clone();
        tokio::spawn(async move {
            let mut received: Vec<Option<Instant>> = vec![None; n];
            let mut count = 0;
            while count < n {
                let Ok(event) = timeout(WAIT, b.next_event()).await else {
                    println!("  STALLED: {count} of {n} messages reached B; none for {WAIT:?}");
                    break;
                };
                let event = event.expect("driver running");
                match event {
                    DriverEvent::Message(m) => {
                        let at = Instant::now();
                        let Some(text) = m.text.as_deref() else {
                            continue;
                        };
                        let Some(i) = text
                            .strip_prefix(&format!("{tag} "))
                            .and_then(|s| s.parse::<usize>().ok())
                        else {
                            continue;
                        };
                        if received[i].is_none() {
                            received[i] = Some(at);
                            count += 1;
                        }
                    }
                    DriverEvent::Undecryptable(u) => panic!("undecryptable: {u:?}"),
                    DriverEvent::Failed { reason, detail } => {
                        panic!("receiver failed: {reason}: {detail}")
                    }
                    other => {
                        if std::env::var_os("MSG_BENCH_DEBUG").is_some() {
                            eprintln!("B: {other:?}");
                        }
                    }
                }
            }
            (b, received)
        })
    };
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..concurrency)
        .map(|_| {
            let control = a.control();
            let sent = Arc::clone(&sent);
            let next = Arc::clone(&next);
            let to = to.to_owned();
            let tag = tag.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if let Some(rate) = rate {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    *sent[i].lock().expect("lock") = Some(Instant::now());
                    match timeout(WAIT, control.send_text(&to, &format!("{tag} {i}"))).await {
                        Ok(result) => {
                            result.expect("send acked");
                        }
                        Err(_) => {
                            println!(
                                "  STALLED: send_text of message {i} not answered in {WAIT:?}"
                            );
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.await.expect("sender task");
    }
    let acked = started.elapsed();
    let (b, received) = receiver.await.expect("receiver task");
    let Some(last) = received.iter().flatten().max() else {
        println!("wafleet {label}: nothing received");
        return b;
    };
    let wall = *last - started;
    let latencies: Vec<Duration> = received
        .iter()
        .zip(sent.iter())
        .filter_map(|(r, s)| Some((*r)? - s.lock().expect("lock").expect("sent")))
        .collect();
    let n = latencies.len();
    println!(
        "wafleet {label}: {n} messages received, {concurrency} in flight{}, all acked {:.2} s, all received {:.2} s -> {:.0} msg/s",
        rate.map(|r| format!(", paced {r:.0} msg/s")).unwrap_or_default(),
        acked.as_secs_f64(),
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    support::report("send_text -> B decrypted", 30, latencies);
    b
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
                "Baileys 7.0.0-rc14 {}: {} messages, {} in flight, all received {:.2} s -> {:.0} msg/s",
                v["label"].as_str().unwrap_or(""),
                v["n"],
                v["concurrency"],
                v["wall_ms"].as_f64().unwrap_or(0.0) / 1e3,
                v["msg_per_s"].as_f64().unwrap_or(0.0)
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sim = Arc::new(
            Simulator::start(SimConfig {
                control_bind: Some(([127, 0, 0, 1], 0).into()),
                ..SimConfig::default()
            })
            .await
            .expect("sim"),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let a = linked(&sim, dir.path(), "15550000001").await;
        let b = linked(&sim, dir.path(), "15550000002").await;
        // Warm-up (sessions established, not reported).
        let b = run("warmup", &a, b, "15550000002", 20, 1, None).await;
        println!("--- measured ---");
        let b = run("burst", &a, b, "15550000002", n, 32, None).await;
        let b = run("paced", &a, b, "15550000002", n, 64, Some(1000.0)).await;
        b.finish().await;
        a.finish().await;
        let peer = Arc::clone(&sim);
        tokio::task::spawn_blocking(move || measure_baileys(&peer, n, 32, "1666"))
            .await
            .expect("Baileys run");
    });
}
