//! `wafleet coordinator`, run as the built binary: the coordinator library's flags.

use std::process::Command;

#[test]
fn help_lists_the_coordinator_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args(["coordinator", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Usage: wafleet coordinator"), "{text}");
    for flag in [
        "--pg-url",
        "--nats-url",
        "--heartbeat-interval",
        "--missed-heartbeats",
        "--lease-ttl",
        "--worker-reply-timeout",
        "--blob-dir",
        "--s3-endpoint",
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[test]
fn a_bad_command_line_exits_2_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args([
            "coordinator",
            "--pg-url",
            "postgres://x",
            "--lease-ttl",
            "never",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8(out.stderr).unwrap();
    assert!(text.starts_with("wafleet coordinator: lease TTL"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args(["coordinator", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
