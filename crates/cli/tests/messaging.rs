//! `wafleet listen` and `wafleet send`, run as the built binary against an in-process
//! simulator: two wafleet sessions linked to two simulated accounts talk to each other.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use wafleet_sim::{SimConfig, Simulator};

const ALICE: &str = "15550000001";
const BOB: &str = "15550000002";
mod cli_support;

use cli_support::{command, link, run, send, Listener};

async fn two_accounts() -> Simulator {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.add_phone(ALICE).unwrap();
    sim.add_phone(BOB).unwrap();
    sim
}

fn user(jid: &str) -> String {
    let (user, server) = jid.split_once('@').unwrap();
    let user = user.split(':').next().unwrap();
    format!("{user}@{server}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_what_another_session_sends_and_both_directions_work() {
    let sim = two_accounts().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = link(&sim, dir.path(), "alice", ALICE).await;
    let bob = link(&sim, dir.path(), "bob", BOB).await;

    let mut listen = Listener::start(&sim, dir.path(), "bob");
    assert_eq!(listen.ready().await, bob);
    // By phone number (pkmsg: no session yet).
    let sent = send(&sim, dir.path(), "alice", BOB, "hello bob").await;
    let id = sent["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("3EB0") && id.len() == 22, "{id}");
    assert_eq!(sent["chat"], format!("{BOB}@s.whatsapp.net"));
    let got = listen.message().await;
    assert_eq!(got["id"], id.as_str(), "{got}");
    assert_eq!(got["type"], "text");
    assert_eq!(got["text"], "hello bob");
    assert_eq!(got["from_me"], false);
    assert_eq!(got["sender"], user(&alice));
    assert_eq!(got["chat"], user(&alice));
    assert!(
        got["timestamp"].as_u64().unwrap() > 1_600_000_000_000,
        "{got}"
    );
    // Again, by JID (msg on the established session).
    let sent = send(
        &sim,
        dir.path(),
        "alice",
        &format!("{BOB}@s.whatsapp.net"),
        "second",
    )
    .await;
    let got = listen.message().await;
    assert_eq!(
        (got["id"].clone(), got["text"].clone()),
        (sent["id"].clone(), "second".into())
    );
    listen.stop().await;

    // The other way: bob answers, alice listens.
    let mut listen = Listener::start(&sim, dir.path(), "alice");
    assert_eq!(listen.ready().await, alice);
    let sent = send(&sim, dir.path(), "bob", ALICE, "hi alice").await;
    let got = listen.message().await;
    assert_eq!(got["id"], sent["id"]);
    assert_eq!(got["text"], "hi alice");
    assert_eq!(got["sender"], user(&bob));
    listen.stop().await;
    sim.shutdown().await;
}

/// The account's simulated phone writes to another chat: `wafleet listen` of its companion
/// prints the phone's device-sent copy as `from_me`, in the chat with the recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_the_phones_own_message_as_from_me() {
    let sim = two_accounts().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = link(&sim, dir.path(), "alice", ALICE).await;
    let mut listen = Listener::start(&sim, dir.path(), "alice");
    assert_eq!(listen.ready().await, alice);
    // The phone reaches the companion only once the companion's prekeys are on the server.
    for _ in 0..500 {
        if sim
            .counters()
            .prekeys_stored
            .get(&alice)
            .is_some_and(|n| *n > 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = sim
        .phone_send_text(ALICE, BOB, "from alice's phone")
        .expect("the server acked the phone's message");
    let got = listen.message().await;
    assert_eq!(got["id"], id.as_str(), "{got}");
    assert_eq!(got["from_me"], true, "{got}");
    assert_eq!(got["chat"], format!("{BOB}@s.whatsapp.net"));
    assert_eq!(got["sender"], format!("{ALICE}@s.whatsapp.net"));
    assert_eq!(got["text"], "from alice's phone");
    listen.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_sessions_fail_at_once_with_typed_exit_codes() {
    let sim = two_accounts().await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(command(&sim, dir.path(), "listen", "nobody", &["--json"])).await;
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("not linked: run `wafleet link --session nobody` first"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let out = run(command(
        &sim,
        dir.path(),
        "send",
        "nobody",
        &["--to", BOB, "--text", "x"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(out.stderr.contains("not linked"), "{}", out.stderr);
    // An invalid recipient is refused before anything else.
    for bad in [
        "hello",
        "123",
        "15550000002:1@s.whatsapp.net",
        "x@example.com",
    ] {
        let out = run(command(
            &sim,
            dir.path(),
            "send",
            "nobody",
            &["--to", bad, "--text", "x"],
        ))
        .await;
        assert_eq!(out.status.code(), Some(4), "{bad}: {}", out.stderr);
        assert!(out.stderr.contains("invalid recipient"), "{}", out.stderr);
    }
    // Nothing connected, nothing was written.
    assert!(sim.counters().live_sockets.is_empty());
    assert!(!dir.path().join("nobody").exists());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_an_unknown_number_or_an_unreachable_server_fails_typed() {
    let sim = two_accounts().await;
    let dir = tempfile::tempdir().unwrap();
    link(&sim, dir.path(), "alice", ALICE).await;
    let out = run(command(
        &sim,
        dir.path(),
        "send",
        "alice",
        &["--to", "15559999999", "--text", "anyone?"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", out.stderr);
    assert!(out.stderr.contains("no such user"), "{}", out.stderr);
    // A server that does not answer: no login within --timeout.
    let root = hex::encode(sim.root_public_key());
    let out = run({
        let mut c = Command::new(cli_support::wafleet_bin());
        c.args([
            "send",
            "--session",
            "alice",
            "--server",
            "ws://127.0.0.1:9/ws/chat",
        ])
        .args(["--root-key", &root, "--data-dir"])
        .arg(dir.path())
        .args([
            "--to",
            BOB,
            "--text",
            "x",
            "--timeout",
            "1",
            "--backoff-base-ms",
            "5000",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true);
        c
    })
    .await;
    assert_eq!(out.status.code(), Some(6), "{}", out.stderr);
    assert!(out.stderr.contains("timeout"), "{}", out.stderr);
    sim.shutdown().await;
}
