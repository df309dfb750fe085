//! Shared by the CLI tests that run `wafleet link`, `listen` and `send` against the
//! simulator.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wafleet_sim::Simulator;

/// How long `wafleet link` may stay silent.
const LINK_GUARD: Duration = Duration::from_secs(120);

/// `wafleet <verb> --session <session>` against the simulator, output piped.
pub fn command(
    sim: &Simulator,
    data_dir: &Path,
    verb: &str,
    session: &str,
    extra: &[&str],
) -> Command {
    let root = hex::encode(sim.root_public_key());
    let mut command = Command::new(env!("CARGO_BIN_EXE_wafleet"));
    command
        .args([verb, "--session", session, "--server"])
        .arg(sim.ws_url())
        .args(["--root-key", &root, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Links `session` to the account of `phone` with `wafleet link` (QR scanned by the
/// simulated phone); returns the device JID.
pub async fn link(sim: &Simulator, data_dir: &Path, session: &str, phone: &str) -> String {
    let mut child = command(sim, data_dir, "link", session, &["--json"])
        .spawn()
        .expect("wafleet runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut jid = None;
    while let Some(line) = tokio::time::timeout(LINK_GUARD, stdout.next_line())
        .await
        .expect("link printed nothing in time")
        .unwrap()
    {
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "qr" && jid.is_none() {
            let code = event["code"].as_str().unwrap();
            jid = Some(sim.scan_qr(phone, code).await.unwrap().to_string());
        }
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "link {session}: {status:?}");
    jid.expect("a QR was shown")
}
