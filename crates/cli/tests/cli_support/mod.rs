//! Shared by the CLI tests that run `wafleet link`, `listen` and `send` against the
//! simulator, and by the interop tests that run them beside stock Baileys
//! (`tests/interop`, which includes this file by path).

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use wafleet_sim::Simulator;

/// How long `wafleet link` may stay silent.
const LINK_GUARD: Duration = Duration::from_secs(120);

/// The `wafleet` binary. In this package's tests cargo names it; a test of another package
/// (the interop suite) builds it with the cargo running the test, into the same target
/// directory (`<target>/<profile>/wafleet`, beside the test's own `deps/`).
pub fn wafleet_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_wafleet") {
        return PathBuf::from(bin);
    }
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "wafleet", "--bin", "wafleet"])
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "cargo build -p wafleet failed: {status:?}"
        );
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("<target>/<profile>/deps/<test>");
        let bin = profile_dir.join("wafleet");
        assert!(bin.exists(), "no wafleet binary at {}", bin.display());
        bin
    })
    .clone()
}

/// `wafleet <verb> --session <session>` against the simulator, output piped.
pub fn command(
    sim: &Simulator,
    data_dir: &Path,
    verb: &str,
    session: &str,
    extra: &[&str],
) -> Command {
    let root = hex::encode(sim.root_public_key());
    let mut command = Command::new(wafleet_bin());
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

/// How long a command, or a listener's next line, may take.
pub const GUARD: Duration = Duration::from_secs(60);

/// What a finished command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(mut command: Command) -> Output {
    let output = tokio::time::timeout(GUARD, command.output())
        .await
        .expect("wafleet exits in time")
        .expect("wafleet runs");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `wafleet listen --json`.
pub struct Listener {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

impl Listener {
    pub fn start(sim: &Simulator, data_dir: &Path, session: &str) -> Listener {
        let mut child = command(sim, data_dir, "listen", session, &["--json"])
            .spawn()
            .expect("wafleet runs");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Listener {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the `ready: <jid>` line on stderr.
    pub async fn ready(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(GUARD, self.stderr.next_line())
                .await
                .expect("listen never got ready")
                .unwrap()
                .expect("listen ended before it was ready");
            if let Some(jid) = line.strip_prefix("ready: ") {
                return jid.to_owned();
            }
        }
    }

    /// The next JSON line on stdout.
    pub async fn event(&mut self) -> Value {
        let line = tokio::time::timeout(GUARD, self.stdout.next_line())
            .await
            .expect("listen printed nothing in time")
            .unwrap()
            .expect("listen's output ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
    }

    /// The next `message` line (receipts on the way are skipped).
    pub async fn message(&mut self) -> Value {
        loop {
            let event = self.event().await;
            match event["event"].as_str() {
                Some("message") => return event,
                Some("receipt") => continue,
                _ => panic!("unexpected line: {event}"),
            }
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `wafleet send --json`; the `sent` line.
pub async fn send(sim: &Simulator, data_dir: &Path, session: &str, to: &str, text: &str) -> Value {
    let out = run(command(
        sim,
        data_dir,
        "send",
        session,
        &["--to", to, "--text", text, "--json"],
    ))
    .await;
    assert!(
        out.status.success(),
        "send: {:?} {}",
        out.status,
        out.stderr
    );
    let sent: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON: {:?}: {e}", out.stdout));
    assert_eq!(sent["event"], "sent", "{sent}");
    sent
}
