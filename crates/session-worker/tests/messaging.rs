//! The driver's durability rule with a messenger: an inbound message is acked only after
//! the sink took it and the Signal state that decrypted it is saved. A sink that fails or a
//! save that fails leaves the message un-acked, and the next connection gets it again (same
//! id, decrypted, never undecryptable).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use support::*;
use wafleet_session_worker::{
    ControlError, DriverConfig, DriverEvent, FsSessionStore, Inbound, InboundSink, SessionDriver,
    SessionStore, SinkError, StoreError, StoredSession,
};
use wafleet_sim::{SimConfig, Simulator};

const ALICE: &str = "15550000021";
const BOB: &str = "15550000022";

/// Links a session to `phone`'s account, waits for its first prekey upload, stops it.
async fn link_account(sim: &Simulator, store: Arc<FsSessionStore>, phone: &str) -> String {
    let mut driver = SessionDriver::start(config_for(sim, phone), store).unwrap();
    let qr = first_qr(&mut driver).await;
    let (scan, _) = tokio::join!(sim.scan_qr(phone, &qr), async {
        wait_for(&mut driver, "prekeys uploaded", |e| {
            matches!(e, DriverEvent::PreKeysUploaded { .. }).then_some(())
        })
        .await
    });
    let jid = scan.unwrap().to_string();
    driver.finish().await;
    jid
}

/// Records what it is given; refuses the first `fail` deliveries.
#[derive(Default)]
struct Recorder {
    fail: AtomicU32,
    seen: Mutex<Vec<DriverEvent>>,
}

#[async_trait::async_trait]
impl InboundSink for Recorder {
    async fn deliver(&self, event: &DriverEvent) -> Result<(), SinkError> {
        self.seen.lock().unwrap().push(event.clone());
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SinkError("refused on purpose".into()));
        }
        Ok(())
    }
}

impl Recorder {
    fn messages(&self) -> Vec<(String, Option<String>)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                DriverEvent::Message(m) => Some((m.id.clone(), m.text.clone())),
                DriverEvent::Undecryptable(u) => panic!("undecryptable: {u:?}"),
                _ => None,
            })
            .collect()
    }
}

/// A file store whose saves fail while `broken` is set.
struct Flaky {
    inner: FsSessionStore,
    broken: AtomicBool,
}

impl SessionStore for Flaky {
    fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        self.inner.load()
    }
    fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("disk on fire".into()));
        }
        self.inner.save(session)
    }
    fn mark_logged_out(&self) -> Result<(), StoreError> {
        self.inner.mark_logged_out()
    }
}

async fn sender(sim: &Simulator, dir: &std::path::Path) -> SessionDriver {
    let mut alice = SessionDriver::start(config_for(sim, "alice"), store(dir, "alice")).unwrap();
    wait_for(&mut alice, "alice ready", ready).await;
    alice
}

fn receiver_config(sim: &Simulator, sink: &Arc<Recorder>) -> DriverConfig {
    DriverConfig {
        inbound: Inbound::Sink(sink.clone()),
        ..config_for(sim, "bob")
    }
}

async fn two_linked(dir: &std::path::Path) -> Simulator {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.add_phone(ALICE).unwrap();
    sim.add_phone(BOB).unwrap();
    link_account(&sim, store(dir, "alice"), ALICE).await;
    link_account(&sim, store(dir, "bob"), BOB).await;
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delivery_is_not_acked_and_comes_again() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_linked(dir.path()).await;
    let sink = Arc::new(Recorder::default());
    sink.fail.store(1, Ordering::SeqCst);
    let mut bob =
        SessionDriver::start(receiver_config(&sim, &sink), store(dir.path(), "bob")).unwrap();
    wait_for(&mut bob, "bob ready", ready).await;
    let alice = sender(&sim, dir.path()).await;
    let sent = alice.control().send_text(BOB, "once more").await.unwrap();
    // Refused once (the connection ends without the ack), delivered on the next one.
    eventually("the message delivered twice", || sink.messages().len() >= 2).await;
    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    for (id, text) in &messages {
        assert_eq!(
            (id.as_str(), text.as_deref()),
            (sent.id.as_str(), Some("once more"))
        );
    }
    let (reason, _) = wait_for(&mut bob, "the sink's disconnect", |e| match e {
        DriverEvent::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "sink_error");
    bob.finish().await;
    alice.finish().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_stops_the_driver_without_the_ack() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_linked(dir.path()).await;
    let sink = Arc::new(Recorder::default());
    let flaky = Arc::new(Flaky {
        inner: FsSessionStore::new(
            dir.path(),
            &wafleet_session_worker::SessionName::parse("bob").unwrap(),
        ),
        broken: AtomicBool::new(false),
    });
    let mut bob = SessionDriver::start(receiver_config(&sim, &sink), flaky.clone()).unwrap();
    wait_for(&mut bob, "bob ready", ready).await;
    flaky.broken.store(true, Ordering::SeqCst);
    let alice = sender(&sim, dir.path()).await;
    let sent = alice.control().send_text(BOB, "persist me").await.unwrap();
    let reason = wait_for(&mut bob, "storage_error", failed).await.0;
    assert_eq!(reason, "storage_error");
    // Started again on a working disk: the same message, from the state on disk.
    let sink = Arc::new(Recorder::default());
    let mut bob =
        SessionDriver::start(receiver_config(&sim, &sink), store(dir.path(), "bob")).unwrap();
    wait_for(&mut bob, "bob ready again", ready).await;
    eventually("the message delivered again", || {
        !sink.messages().is_empty()
    })
    .await;
    assert_eq!(
        sink.messages()[0],
        (sent.id.clone(), Some("persist me".to_owned()))
    );
    bob.finish().await;
    alice.finish().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_text_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = two_linked(dir.path()).await;
    let alice = sender(&sim, dir.path()).await;
    let control = alice.control();
    assert!(matches!(
        control.send_text("not a number", "x").await,
        Err(ControlError::InvalidRecipient(_))
    ));
    assert!(matches!(
        control.send_text("15559999999", "x").await,
        Err(ControlError::NoSuchUser(_))
    ));
    let sent = control
        .send_text(&format!("{BOB}@s.whatsapp.net"), "hi")
        .await
        .unwrap();
    assert!(sent.id.starts_with("3EB0"), "{sent:?}");
    assert_eq!(sent.chat, format!("{BOB}@s.whatsapp.net"));
    alice.finish().await;
    // An ended driver refuses.
    assert_eq!(control.send_text(BOB, "x").await, Err(ControlError::Ended));
    sim.shutdown().await;
}
