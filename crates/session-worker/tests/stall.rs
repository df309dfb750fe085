//! A server that accepts the WebSocket and then says nothing: the driver tears the attempt
//! down after its handshake timeout and retries with backoff, then gives up as configured.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::{
    Backoff, DriverConfig, DriverEvent, DriverExit, FsSessionStore, ServerConfig, SessionDriver,
    SessionName,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_torn_down_and_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            // Completes the WebSocket upgrade, then never answers the Noise hello.
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                held.push(ws);
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsSessionStore::new(
        dir.path(),
        &SessionName::parse("stalled").unwrap(),
    ));
    let config = DriverConfig {
        label: "stalled".into(),
        server: ServerConfig {
            url: format!("ws://{addr}/ws/chat"),
            root: RootKey::custom([7; 32]),
        },
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(40),
        },
        handshake_timeout: Duration::from_millis(300),
        max_consecutive_failures: Some(3),
        ..DriverConfig::default()
    };
    let mut driver = SessionDriver::start(config, store.clone()).unwrap();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), driver.next_event())
        .await
        .expect("the driver gives up in time")
    {
        events.push(event);
    }
    let expected = [
        ("handshake_timeout", true),
        ("handshake_timeout", true),
        ("handshake_timeout", false),
    ];
    let disconnects: Vec<(&str, bool)> = events
        .iter()
        .filter_map(|e| match e {
            DriverEvent::Disconnected {
                reason,
                will_reconnect,
            } => Some((reason.as_str(), *will_reconnect)),
            _ => None,
        })
        .collect();
    assert_eq!(disconnects, expected, "{events:?}");
    assert!(matches!(
        events.last(),
        Some(DriverEvent::Failed { reason, .. }) if reason == "unreachable"
    ));
    assert!(
        matches!(driver.join().await, DriverExit::Failed { reason, .. } if reason == "unreachable")
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert!(!store.dir().exists(), "nothing saved");
    server.abort();
}
