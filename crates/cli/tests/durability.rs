//! Restart durability of `wafleet listen` (issue 12, must-show): 500 messages stream in
//! while the listener is killed with SIGKILL at random points and restarted. The union of
//! what it printed holds every message, a message printed twice has the same id and text,
//! nothing is undecryptable, and both sides still talk afterwards.
//!
//! The sender is a wafleet session driven in-process (`SessionDriver` +
//! `DriverControl::send_text`); the receiver is the real `wafleet listen --json` binary;
//! both are linked with the real `wafleet link` to two accounts of the simulator.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverEvent, FsSessionStore, ServerConfig, SessionDriver, SessionName,
};
use wafleet_sim::{SimConfig, Simulator};

const ALICE: &str = "15550000011";
const BOB: &str = "15550000012";
const MESSAGES: usize = 500;
const KILLS: usize = 4;
mod cli_support;

use cli_support::{command, link};

const GUARD: Duration = Duration::from_secs(120);

/// One run of `wafleet listen --json`: its stdout lines go to `lines` (tagged with the
/// run number) until it ends.
fn listen(
    sim: &Simulator,
    data_dir: &Path,
    run: usize,
    lines: mpsc::UnboundedSender<(usize, String)>,
) -> tokio::process::Child {
    let mut child = command(
        sim,
        data_dir,
        "listen",
        "bob",
        &["--json", "--backoff-base-ms", "50"],
    )
    .spawn()
    .expect("wafleet runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            if lines.send((run, line)).is_err() {
                break;
            }
        }
    });
    child
}

fn alice_driver(sim: &Simulator, data_dir: &Path) -> SessionDriver {
    let config = DriverConfig {
        label: "alice".into(),
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
    let store = Arc::new(FsSessionStore::new(
        data_dir,
        &SessionName::parse("alice").unwrap(),
    ));
    SessionDriver::start(config, store).expect("driver starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_listen_loses_nothing_and_both_sides_keep_talking() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.add_phone(ALICE).unwrap();
    sim.add_phone(BOB).unwrap();
    let dir = tempfile::tempdir().unwrap();
    link(&sim, dir.path(), "alice", ALICE).await;
    link(&sim, dir.path(), "bob", BOB).await;

    // Random kill points (printed, so a failure can be replayed by reading the log).
    let seed = OsRng.next_u64();
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut kill_at: Vec<usize> = (0..KILLS)
        .map(|_| 20 + (next() % (MESSAGES as u64 - 40)) as usize)
        .collect();
    kill_at.sort_unstable();
    eprintln!("seed {seed}: SIGKILL after {kill_at:?} printed lines");

    let mut alice = alice_driver(&sim, dir.path());
    let control = alice.control();
    loop {
        let event = tokio::time::timeout(GUARD, alice.next_event())
            .await
            .expect("alice logs in")
            .expect("alice's driver runs");
        if matches!(event, DriverEvent::Ready { .. }) {
            break;
        }
    }
    // Alice's other events (receipts, sent) are drained so the channel does not grow.
    let (alice_messages, mut alice_inbox) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = alice.next_event().await {
            if let DriverEvent::Message(m) = event {
                let _ = alice_messages.send(m);
            }
        }
    });

    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    let mut run = 0;
    let mut listener = listen(&sim, dir.path(), run, lines_tx.clone());
    // The sender: 500 texts, each acked by the server before the next.
    let sender = tokio::spawn({
        let control = control.clone();
        async move {
            let mut sent = Vec::with_capacity(MESSAGES);
            for i in 0..MESSAGES {
                let text = format!("message {i}");
                let id = match control.send_text(BOB, &text).await {
                    Ok(sent) => sent.id,
                    Err(e) => panic!("send {i}: {e}"),
                };
                sent.push((id, text));
            }
            sent
        }
    });

    let mut printed: Vec<Value> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut kills = 0;
    let mut wanted: Option<HashMap<String, String>> = None;
    let mut sender = Some(sender);
    let deadline = tokio::time::Instant::now() + GUARD * 2;
    loop {
        if let Some(s) = &sender {
            if s.is_finished() {
                let sent = sender.take().unwrap().await.expect("the sender finished");
                wanted = Some(sent.into_iter().collect());
            }
        }
        if let Some(w) = &wanted {
            if kills >= KILLS && w.keys().all(|id| seen.contains_key(id)) {
                break;
            }
        }
        let (_, line) = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "seed {seed}: not every message printed in time: {} of {MESSAGES} seen, {kills} kills",
                    seen.len()
                )
            })
            .expect("the line channel stays open");
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        assert_ne!(event["event"], "undecryptable", "seed {seed}: {event}");
        if event["event"] != "message" {
            continue;
        }
        let id = event["id"].as_str().unwrap().to_owned();
        let text = event["text"].as_str().unwrap().to_owned();
        if let Some(before) = seen.get(&id) {
            assert_eq!(before, &text, "seed {seed}: id {id} printed with two texts");
        }
        seen.insert(id, text);
        printed.push(event);
        if kills < KILLS && printed.len() >= kill_at[kills] {
            // SIGKILL at once, whatever the listener is doing, then a new one.
            listener.start_kill().expect("SIGKILL");
            let status = listener.wait().await.unwrap();
            assert!(!status.success());
            kills += 1;
            run += 1;
            listener = listen(&sim, dir.path(), run, lines_tx.clone());
        }
    }
    let wanted = wanted.unwrap();
    assert_eq!(wanted.len(), MESSAGES);
    for (id, text) in &wanted {
        assert_eq!(seen.get(id), Some(text), "seed {seed}: {id}");
    }
    // Nothing but the sent messages.
    assert_eq!(seen.len(), MESSAGES, "seed {seed}");
    eprintln!(
        "seed {seed}: {} lines for {MESSAGES} messages over {} runs",
        printed.len(),
        run + 1
    );

    // Both sides keep talking: bob answers with `wafleet send` (one socket per device: the
    // listener is stopped first), alice (in-process) receives it, and alice's next message
    // reaches a new listener.
    listener.start_kill().unwrap();
    let _ = listener.wait().await;
    let out = tokio::time::timeout(
        GUARD,
        command(
            &sim,
            dir.path(),
            "send",
            "bob",
            &["--to", ALICE, "--text", "still here"],
        )
        .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let got = tokio::time::timeout(GUARD, alice_inbox.recv())
        .await
        .expect("alice gets bob's reply")
        .unwrap();
    assert_eq!(got.id, reply_id);
    assert_eq!(got.text.as_deref(), Some("still here"));
    let last = control
        .send_text(BOB, "and again")
        .await
        .expect("alice sends");
    let mut listener = listen(&sim, dir.path(), run + 1, lines_tx.clone());
    loop {
        let (_, line) = tokio::time::timeout(GUARD, lines.recv())
            .await
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(event["event"], "undecryptable", "{event}");
        if event["event"] == "message" && event["id"] == last.id.as_str() {
            assert_eq!(event["text"], "and again");
            break;
        }
    }
    listener.start_kill().unwrap();
    let _ = listener.wait().await;
    sim.shutdown().await;
}
