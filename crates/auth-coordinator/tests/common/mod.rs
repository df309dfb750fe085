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

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    listener.local_addr().expect("port").port()
}

/// A nats-server of our own on a free loopback port, killed on drop; it can be stopped
/// and started again on the same port.
pub struct NatsServer {
    pub url: String,
    bin: String,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl NatsServer {
    pub async fn start(bin: &str) -> NatsServer {
        let port = free_port();
        let mut server = NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            bin: bin.to_string(),
            port,
            child: None,
        };
        server.restart().await;
        server
    }

    /// Kills the server (as a crash or a network cut would end it).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on its port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let port = self.port;
        let child = tokio::process::Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        eventually(Duration::from_secs(10), "nats-server up", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .expect("connect to nats")
    }

    /// A client with the coordinator's reconnect options (reconnects within ~250 ms of
    /// the server's return), reporting to `link`.
    pub async fn fast_client(
        &self,
        link: &wafleet_auth_coordinator::service::NatsLink,
    ) -> async_nats::Client {
        let client = wafleet_auth_coordinator::cli::connect_nats(&self.url, link)
            .await
            .expect("connect to nats");
        client.flush().await.expect("flush");
        client
    }
}

/// A PostgreSQL server of our own (the machine's binaries, `initdb` into a temporary
/// directory owned by the `postgres` user, a free port), to stop and start in outage
/// tests. Never the machine's server. Stopped on drop.
pub struct PrivatePg {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl PrivatePg {
    /// `None` (the test prints SKIPPED) when no PostgreSQL binaries are installed.
    pub fn start() -> Option<PrivatePg> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
            .max();
        let Some(bin) = bin else {
            eprintln!("SKIPPED: no PostgreSQL binaries under /usr/lib/postgresql");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("wafleet-pg-{}", unique_schema()));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let pg = PrivatePg {
            port: free_port(),
            dir,
            bin,
        };
        run_ok(
            std::process::Command::new("chown")
                .args(["postgres:postgres", pg.dir.to_str().expect("utf-8 dir")]),
        );
        pg.as_postgres(&[
            pg.bin.join("initdb").to_str().expect("path"),
            "-D",
            pg.data().as_str(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        pg.pg_ctl_start();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn as_postgres(&self, args: &[&str]) {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).args(args);
        run_ok(&mut command);
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.to_string_lossy()
        );
        let log = self.dir.join("log").to_string_lossy().into_owned();
        self.as_postgres(&[
            self.bin.join("pg_ctl").to_str().expect("path"),
            "-D",
            self.data().as_str(),
            "-o",
            options.as_str(),
            "-l",
            log.as_str(),
            "-w",
            "start",
        ]);
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=2",
            self.port
        )
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub fn stop(&self) {
        self.as_postgres(&[
            self.bin.join("pg_ctl").to_str().expect("path"),
            "-D",
            self.data().as_str(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
    }

    /// Starts it again.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", self.data().as_str(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_ok(command: &mut std::process::Command) {
    let out = command.output().expect("run command");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
