//! Link latency on loopback against the project's simulator: session start → first QR
//! event, and QR scan → ready (pair-success, countersign, save with fsync, 515, login
//! handshake, `<success>`), for 1 and for 200 concurrent links.
//!
//! `cargo bench -p wafleet-session-worker --bench link_latency` (release build). Prints
//! p50/p99/max per phase. Results and the command are recorded in docs/BENCHMARKS.md.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverEvent, FsSessionStore, ServerConfig, SessionDriver, SessionName,
};
use wafleet_sim::{SimConfig, Simulator};

struct Sample {
    to_qr: Duration,
    scan_to_ready: Duration,
    /// Scan until the server holds the 812 prekeys (saved here first): what Baileys'
    /// `connection: open` waits for.
    scan_to_prekeys: Duration,
}

async fn one_link(sim: Arc<Simulator>, dir: std::path::PathBuf, index: usize) -> Sample {
    let phone = format!("1555{index:07}");
    sim.add_phone(&phone).expect("phone");
    let name = SessionName::parse(&format!("bench-{index}")).expect("name");
    let store = Arc::new(FsSessionStore::new(dir, &name));
    let config = DriverConfig {
        label: name.to_string(),
        server: ServerConfig {
            url: sim.ws_url(),
            root: RootKey::custom(sim.root_public_key()),
        },
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        ..DriverConfig::default()
    };
    let start = Instant::now();
    let mut driver = SessionDriver::start(config, store).expect("driver");
    let qr = loop {
        match driver.next_event().await.expect("driver running") {
            DriverEvent::Qr { code, .. } => break code.expose().to_owned(),
            DriverEvent::Failed { reason, detail } => panic!("link {index}: {reason}: {detail}"),
            _ => {}
        }
    };
    let to_qr = start.elapsed();
    let scanned = Instant::now();
    let wait_ready = async {
        loop {
            match driver.next_event().await.expect("driver running") {
                DriverEvent::Ready { jid, .. } => break jid,
                DriverEvent::Failed { reason, detail } => {
                    panic!("link {index}: {reason}: {detail}")
                }
                _ => {}
            }
        }
    };
    let (scan, jid) = tokio::join!(sim.scan_qr(&phone, &qr), wait_ready);
    scan.expect("scan");
    let scan_to_ready = scanned.elapsed();
    while sim
        .counters()
        .prekeys_stored
        .get(&jid)
        .copied()
        .unwrap_or(0)
        < 812
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let scan_to_prekeys = scanned.elapsed();
    driver.finish().await;
    Sample {
        to_qr,
        scan_to_ready,
        scan_to_prekeys,
    }
}

/// `rounds` rounds of `concurrent` simultaneous links; percentiles over all links.
async fn measure(sim: &Arc<Simulator>, concurrent: usize, rounds: usize, first_index: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut samples = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        let tasks: Vec<_> = (0..concurrent)
            .map(|i| {
                let index = first_index + round * concurrent + i;
                tokio::spawn(one_link(Arc::clone(sim), dir.path().to_owned(), index))
            })
            .collect();
        for task in tasks {
            samples.push(task.await.expect("link task"));
        }
    }
    println!(
        "{concurrent} concurrent link(s) x {rounds} round(s) = {} links, wall {:.2} s:",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    support::report(
        "start -> first QR",
        28,
        samples.iter().map(|s| s.to_qr).collect(),
    );
    support::report(
        "scan -> ready",
        28,
        samples.iter().map(|s| s.scan_to_ready).collect(),
    );
    support::report(
        "scan -> prekeys on server",
        28,
        samples.iter().map(|s| s.scan_to_prekeys).collect(),
    );
}

/// Stock Baileys against the same simulator through its control API
/// (`tests/interop/oracle/link-bench.mjs`), if the oracle is installed.
fn measure_baileys(sim: &Simulator, links: usize, concurrency: usize, prefix: &str) {
    let started = Instant::now();
    let Some(stdout) = support::run_oracle(sim, "link-bench.mjs", links, concurrency, prefix)
    else {
        return;
    };
    let mut to_qr = Vec::new();
    let mut to_open = Vec::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let ms = |k: &str| Duration::from_secs_f64(v[k].as_f64().expect("number") / 1e3);
        to_qr.push(ms("to_qr_ms"));
        to_open.push(ms("scan_to_open_ms"));
    }
    println!(
        "Baileys 7.0.0-rc14, {concurrency} concurrent, {} links, wall {:.2} s (incl. node start):",
        to_qr.len(),
        started.elapsed().as_secs_f64()
    );
    support::report("start -> first QR", 28, to_qr);
    support::report("scan -> open (prekeys acked)", 28, to_open);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
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
        // Warm-up (not reported).
        measure(&sim, 1, 3, 0).await;
        println!("--- measured ---");
        measure(&sim, 1, 50, 100).await;
        measure(&sim, 200, 1, 1000).await;
        let peer = Arc::clone(&sim);
        tokio::task::spawn_blocking(move || {
            measure_baileys(&peer, 20, 1, "1666");
            measure_baileys(&peer, 200, 200, "1777");
        })
        .await
        .expect("Baileys run");
    });
}
