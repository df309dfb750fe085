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
