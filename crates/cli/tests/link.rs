//! `wafleet link`, run as the built binary against an in-process simulator.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use wafleet_sim::{SimConfig, Simulator};

const PHONE: &str = "15551234567";
const GUARD: Duration = Duration::from_secs(60);

struct Run {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: ChildStderr,
}

fn wafleet(sim: &Simulator, data_dir: &Path, extra: &[&str]) -> Run {
    let root = hex::encode(sim.root_public_key());
    let mut child = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args(["link", "--session", "shop", "--json", "--server"])
        .arg(sim.ws_url())
        .args(["--root-key", &root, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wafleet runs");
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr = child.stderr.take().unwrap();
    Run {
        child,
        stdout,
        stderr,
    }
}

impl Run {
    /// The next JSON event line, `None` at the end of the output.
    async fn event(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(GUARD, self.stdout.next_line())
            .await
            .expect("wafleet printed nothing in time")
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}")))
    }

    async fn event_named(&mut self, name: &str) -> Value {
        loop {
            let event = self
                .event()
                .await
                .unwrap_or_else(|| panic!("output ended before a {name} event"));
            if event["event"] == name {
                return event;
            }
        }
    }

    async fn finish(mut self) -> (ExitStatus, Vec<Value>, String) {
        let mut rest = Vec::new();
        while let Some(event) = self.event().await {
            rest.push(event);
        }
        let status = tokio::time::timeout(GUARD, self.child.wait())
            .await
            .expect("wafleet exits")
            .unwrap();
        let mut stderr = String::new();
        self.stderr.read_to_string(&mut stderr).await.unwrap();
        (status, rest, stderr)
    }
}

async fn simulator(config: SimConfig) -> Simulator {
    let sim = Simulator::start(config).await.unwrap();
    sim.add_phone(PHONE).unwrap();
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_by_qr_then_logs_in_again_without_qr() {
    let sim = simulator(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();

    let mut run = wafleet(&sim, dir.path(), &[]);
    let qr = run.event_named("qr").await;
    assert!(qr["expires_at"].as_u64().is_some());
    let jid = sim
        .scan_qr(PHONE, qr["code"].as_str().unwrap())
        .await
        .unwrap()
        .to_string();
    let ready = run.event_named("ready").await;
    assert_eq!(ready["jid"], jid.as_str());
    // A new link stays until its first prekeys are saved and sent.
    let (status, rest, stderr) = run.finish().await;
    assert!(status.success(), "{status:?} {stderr}");
    assert_eq!(
        rest,
        [serde_json::json!({"event":"pre_keys_uploaded","count":812})]
    );
    assert!(dir.path().join("shop/session.json").exists());
    let deadline = tokio::time::Instant::now() + GUARD;
    while sim.counters().prekeys_stored.get(&jid).copied() != Some(812) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prekeys never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Again: no QR, straight to ready.
    let mut run = wafleet(&sim, dir.path(), &[]);
    let first = run.event().await.unwrap();
    assert_eq!(first["event"], "ready", "{first}");
    assert_eq!(first["jid"], jid.as_str());
    let (status, rest, stderr) = run.finish().await;
    assert!(status.success(), "{status:?} {stderr}");
    assert!(rest.is_empty(), "{rest:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_by_pairing_code() {
    let sim = simulator(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut run = wafleet(&sim, dir.path(), &["--phone", PHONE]);
    let code = run.event_named("pairing_code").await;
    let code = code["code"].as_str().unwrap().to_owned();
    let jid = sim.enter_pairing_code(PHONE, &code).await.unwrap();
    let ready = run.event_named("ready").await;
    assert_eq!(ready["jid"], jid.to_string().as_str());
    let (status, _, stderr) = run.finish().await;
    assert!(status.success(), "{status:?} {stderr}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_phone_fails_before_connecting() {
    let sim = simulator(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let run = wafleet(&sim, dir.path(), &["--phone", "0049-151-CALLME"]);
    let (status, events, stderr) = run.finish().await;
    assert!(!status.success());
    assert!(events.is_empty(), "{events:?}");
    assert!(stderr.contains("invalid phone number"), "{stderr}");
    assert!(!dir.path().join("shop").exists());
    assert!(sim.counters().live_sockets.is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscanned_qrs_exit_non_zero_with_qr_exhausted() {
    let sim = simulator(SimConfig {
        first_qr_ttl: Duration::from_millis(400),
        next_qr_ttl: Duration::from_millis(150),
        qr_refs: 2,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let run = wafleet(
        &sim,
        dir.path(),
        &["--first-qr-ttl-ms", "400", "--next-qr-ttl-ms", "150"],
    );
    let (status, events, stderr) = run.finish().await;
    assert!(!status.success());
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names, ["qr", "qr", "disconnected", "failed"], "{events:?}");
    assert_eq!(events[3]["reason"], "qr_exhausted");
    assert!(stderr.contains("qr_exhausted"), "{stderr}");
    assert!(!dir.path().join("shop/session.json").exists());
    sim.shutdown().await;
}
