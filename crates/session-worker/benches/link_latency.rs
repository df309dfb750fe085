//! Link latency on loopback against the project's simulator: session start → first QR
//! event, and QR scan → ready (pair-success, countersign, save with fsync, 515, login
//! handshake, `<success>`), for 1 and for 200 concurrent links.
//!
//! `cargo bench -p wafleet-session-worker --bench link_latency` (release build). Prints
//! p50/p99/max per phase. Results and the command are recorded in docs/BENCHMARKS.md.

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
                DriverEvent::Ready { .. } => break,
                DriverEvent::Failed { reason, detail } => {
                    panic!("link {index}: {reason}: {detail}")
                }
                _ => {}
            }
        }
    };
    let (scan, ()) = tokio::join!(sim.scan_qr(&phone, &qr), wait_ready);
    scan.expect("scan");
    let scan_to_ready = scanned.elapsed();
    driver.finish().await;
    Sample {
        to_qr,
        scan_to_ready,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(label: &str, mut values: Vec<Duration>) {
    values.sort();
    println!(
        "  {label:<28} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        percentile(&values, 50.0).as_secs_f64() * 1e3,
        percentile(&values, 99.0).as_secs_f64() * 1e3,
        values.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
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
    report(
        "start -> first QR",
        samples.iter().map(|s| s.to_qr).collect(),
    );
    report(
        "scan -> ready",
        samples.iter().map(|s| s.scan_to_ready).collect(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sim = Arc::new(Simulator::start(SimConfig::default()).await.expect("sim"));
        // Warm-up (not reported).
        measure(&sim, 1, 3, 0).await;
        println!("--- measured ---");
        measure(&sim, 1, 50, 100).await;
        measure(&sim, 200, 1, 1000).await;
    });
}
