//! `wafleet demo` runs end to end against its in-process simulator: the README's first
//! command must work on every CI run.

use std::process::Command;

#[test]
fn demo_links_logs_in_pairs_by_code_and_unlinks() {
    let data = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args(["demo", "--local", "--no-qr", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("run wafleet demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let events = |session: &str, event: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with(&format!("[{session}] {{\"event\":\"{event}\"")))
            .count()
    };
    // One QR link and one login without QR, each ready once.
    assert!(events("support-desk", "qr") >= 1, "{stdout}");
    assert_eq!(events("support-desk", "ready"), 2, "{stdout}");
    assert_eq!(events("crm", "pairing_code"), 1, "{stdout}");
    assert_eq!(events("crm", "ready"), 1, "{stdout}");
    assert!(stdout.contains("\"reason\":\"logged_out\""), "{stdout}");
    // The linked session stays on disk; the unlinked one is kept only as logged out.
    assert!(data.path().join("crm/session.json").is_file());
    assert!(!data.path().join("support-desk/session.json").exists());
    assert!(data
        .path()
        .join("support-desk/session.logged-out.json")
        .is_file());
}

/// The README's first command (`scripts/demo.sh` runs exactly this after starting the
/// services): the fleet demo on real NATS, PostgreSQL and S3.
#[test]
fn the_fleet_demo_moves_a_linked_session_to_the_other_worker_without_a_qr() {
    for var in ["WAFLEET_NATS_URL", "WAFLEET_PG_URL", "WAFLEET_S3_ENDPOINT"] {
        assert!(
            std::env::var(var).is_ok_and(|v| !v.is_empty()),
            "{var} is not set: run `eval \"$(bash scripts/services.sh up)\"` first (scripts/test.sh does)"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args(["demo", "--no-qr"])
        .output()
        .expect("run wafleet demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("qr #1"), "{stdout}");
    assert!(stdout.contains("is WORKING on"), "{stdout}");
    assert!(stdout.contains("killed"), "{stdout}");
    assert!(stdout.contains("is WORKING again on"), "{stdout}");
    assert!(stdout.contains("with no QR"), "{stdout}");
    assert!(stdout.contains("sent 0 `replaced`"), "{stdout}");
    // Messages both ways, before and after the kill: a customer's message as an event, a
    // send command answered with an id and shown on the customer's phone, its read receipt.
    let count = |needle: &str| stdout.matches(needle).count();
    assert_eq!(count("is on the bus (message event above)"), 2, "{stdout}");
    assert_eq!(
        count("] wafleet.v1.demo.cmd.session.support-desk.send -> {\"commandId\""),
        2,
        "{stdout}"
    );
    assert_eq!(count("message_sent 3EB0"), 2, "{stdout}");
    assert_eq!(count("== the customer's phone shows 3EB0"), 2, "{stdout}");
    assert!(stdout.contains("receipt read of"), "{stdout}");
    assert!(!stdout.contains("message_undecryptable"), "{stdout}");
}
