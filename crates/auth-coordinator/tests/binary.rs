//! The `wafleet-coordinator` binary: it leads, serves commands, and on SIGTERM exits 0
//! and hands leadership back.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use common::{eventually, nats_server_bin, pg_url, NatsServer, TestSchema};
use wafleet_auth_coordinator::Leadership;
use wafleet_bus_schema::v1::SessionStatus;
use wafleet_bus_schema::{
    decode_reply, CommandVerb, SessionAddress, CONTENT_TYPE_HEADER, CONTENT_TYPE_JSON,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn serves_commands_and_releases_leadership_on_sigterm() {
    let (Some(url), Some(bin)) = (pg_url(), nats_server_bin()) else {
        return;
    };
    let schema = TestSchema::create(&url).await;
    let nats = NatsServer::start(&bin).await;
    let blobs = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wafleet-coordinator"))
        .args([
            "--nats-url",
            &nats.url,
            "--pg-url",
            &url,
            "--pg-schema",
            &schema.name,
        ])
        .args(["--heartbeat-interval", "0.2", "--lease-ttl", "5"])
        .args(["--missed-heartbeats", "3", "--worker-reply-timeout", "1"])
        .arg(format!("--blob-dir={}", blobs.path().display()))
        .kill_on_drop(true)
        .spawn()
        .expect("start wafleet-coordinator");

    let backend = nats.client().await;
    let subject = SessionAddress::new("acme", "support-1")
        .expect("address")
        .command_subject(CommandVerb::Create)
        .to_string();
    let reply = eventually(WAIT, "the coordinator to answer", || {
        let backend = backend.clone();
        let subject = subject.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, CONTENT_TYPE_JSON);
            let message = backend
                .request_with_headers(subject, headers, br#"{"commandId": "b1"}"#.to_vec().into())
                .await
                .ok()?;
            Some(decode_reply(&message.payload, Some(CONTENT_TYPE_JSON)).expect("reply"))
        }
    })
    .await;
    match reply.outcome {
        Some(wafleet_bus_schema::v1::command_reply::Outcome::Session(s)) => {
            assert_eq!(s.status, SessionStatus::Stopped as i32)
        }
        other => panic!("unexpected reply {other:?}"),
    }

    // While it runs, nobody else can lead.
    let mut other = Leadership::start(
        schema.config().pg_config().expect("config"),
        Duration::from_millis(100),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!other.role().is_leader());

    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    tokio::time::timeout(WAIT, other.until_leader())
        .await
        .expect("leadership handed over");
    other.stop().await.expect("stop");
    schema.drop_schema().await;
}

#[test]
fn a_bad_flag_exits_2_and_help_exits_0() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wafleet-coordinator"))
        .args(["--pg-url", "postgres://x", "--missed-heartbeats", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wafleet-coordinator"))
        .arg("--help")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--worker-reply-timeout"));
}
