//! Test helpers: a fresh PostgreSQL schema per test, and a private nats-server per test
//! (the coordinator subscribes to every command and every worker subject, so coordinators
//! of tests running in parallel must not share a server).

#![allow(dead_code)]

use std::future::Future;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wafleet_auth_coordinator::{Registry, RegistryConfig};

/// The test database URL, or `None` (the test prints SKIPPED and passes) when
/// `WAFLEET_PG_URL` is unset: run `eval "$(bash scripts/services.sh up)"` first.
pub fn pg_url() -> Option<String> {
    match std::env::var("WAFLEET_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED: WAFLEET_PG_URL is not set (eval \"$(bash scripts/services.sh up)\")"
            );
            None
        }
    }
}

/// The nats-server binary, or `None` when `WAFLEET_NATS_SERVER` is unset.
pub fn nats_server_bin() -> Option<String> {
    match std::env::var("WAFLEET_NATS_SERVER") {
        Ok(bin) if !bin.is_empty() => Some(bin),
        _ => {
            eprintln!(
                "SKIPPED: WAFLEET_NATS_SERVER is not set (eval \"$(bash scripts/services.sh up)\")"
            );
            None
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A schema name no other test uses.
pub fn unique_schema() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "coord_t{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// A fresh schema in the test database; dropped by [`TestSchema::drop_schema`].
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    pub async fn create(url: &str) -> TestSchema {
        let name = unique_schema();
        let client = admin(url).await;
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create schema");
        TestSchema {
            url: url.to_string(),
            name,
        }
    }

    pub fn config(&self) -> RegistryConfig {
        RegistryConfig {
            url: self.url.clone(),
            schema: Some(self.name.clone()),
            max_connections: 8,
        }
    }

    pub async fn registry(&self) -> Registry {
        Registry::connect(&self.config()).await.expect("registry")
    }

    pub async fn drop_schema(self) {
        let client = admin(&self.url).await;
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await;
    }
}

/// A plain connection to the test database (default schema).
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to test database");
    tokio::spawn(connection);
    client
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A nats-server of our own on a free loopback port, killed on drop.
pub struct NatsServer {
    pub url: String,
    _child: tokio::process::Child,
}

impl NatsServer {
    pub async fn start(bin: &str) -> NatsServer {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            listener.local_addr().expect("port").port()
        };
        let child = tokio::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        let url = format!("nats://127.0.0.1:{port}");
        eventually(Duration::from_secs(10), "nats-server up", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        NatsServer { url, _child: child }
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .expect("connect to nats")
    }
}
