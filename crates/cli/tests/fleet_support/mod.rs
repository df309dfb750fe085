//! A whole fleet for one test, on real services: a private nats-server (JetStream), a
//! fresh PostgreSQL schema, a unique S3 prefix on the SeaweedFS that
//! `scripts/services.sh up` runs, the simulator in-process, and `wafleet coordinator` /
//! `wafleet worker` as child processes (so they can be killed with SIGKILL or paused with
//! SIGSTOP). A backend client sends commands and records every event.
//!
//! [`Fleet::start_with`] swaps in private instances for the fault tests: a 3-node NATS
//! cluster (`scripts/nats-cluster.sh`), a private PostgreSQL server and a private S3
//! server, each stoppable and restartable (see [`services`]).

#![allow(dead_code)]

pub mod services;
pub mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use services::{NatsCluster, PrivatePg, PrivateS3};

use async_nats::HeaderMap;
use futures_util::StreamExt;
use wafleet_blob::{BlobStore, S3BlobStore, S3Config, SessionId as BlobId};
use wafleet_bus_schema::codec::{decode_reply, ContentType};
use wafleet_bus_schema::nats::decode_event_message;
use wafleet_bus_schema::v1::{self, session_event::Payload, SessionStatus};
use wafleet_bus_schema::{
    CommandVerb, EventStreamConfig, SessionAddress, CONTENT_TYPE_HEADER, CONTENT_TYPE_JSON,
    EVENT_STREAM,
};
use wafleet_sim::{SimConfig, Simulator};

pub const TENANT: &str = "acme";
/// The coordinator's pacing in these tests: 300 ms heartbeats.
pub const HEARTBEAT_MS: u64 = 300;
pub const LEASE_TTL_S: f64 = 6.0;
/// The workers' own lease renewals (heartbeats renew every listed lease as well).
pub const RENEW_MS: u64 = 3000;
/// A worker silent this many heartbeats (2.4 s) is dead. A worker trusts its leases for
/// that long after each acknowledged heartbeat, less 0.5 s: enough for a loaded 2-core
/// machine and for a standby coordinator to take over before any lease lapses (with 5,
/// a 1.0 s window, a takeover under load let leases lapse and move).
pub const MISSED_HEARTBEATS: u32 = 8;

/// A hex master key for the workers.
pub const MASTER_KEY: &str = "4b1d6f0e9a3c2b1d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5";
pub const OTHER_MASTER_KEY: &str =
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the fleet tests need the real services; run \
             `eval \"$(bash scripts/services.sh up)\"` first (scripts/test.sh does)"
        ),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

fn free_port() -> u16 {
    services::free_port()
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

/// A child process killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Lines the child printed on stdout.
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Where its stderr goes.
    pub log: std::path::PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits for the process to exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// What the process logged (stderr) and printed (stdout).
    pub fn log_text(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        for line in self.stdout.lock().expect("lines").iter() {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, args: &[String], env: &[(&str, String)], dir: &std::path::Path) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wafleet"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .env(
            "WAFLEET_LOG",
            "info,wafleet_session_worker=trace,wafleet_auth_coordinator=debug",
        )
        .env("RUST_LOG", "info,wafleet_auth_coordinator=debug")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn wafleet");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    if let Some(out) = child.stdout.take() {
        let lines = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
    }
    Proc {
        name: name.to_string(),
        child,
        stdout,
        log,
    }
}

/// An event as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    /// When the worker produced it (the event's timestamp; the receipt time without one).
    pub wall: SystemTime,
    pub event: v1::SessionEvent,
}

impl Seen {
    fn received(event: v1::SessionEvent) -> Seen {
        let wall = event
            .timestamp
            .as_ref()
            .and_then(|t| {
                let secs = u64::try_from(t.seconds).ok()?;
                let nanos = u32::try_from(t.nanos).ok()?;
                UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            })
            .unwrap_or_else(SystemTime::now);
        Seen {
            at: Instant::now(),
            wall,
            event,
        }
    }
}

impl Seen {
    pub fn kind(&self) -> &'static str {
        match &self.event.payload {
            Some(Payload::Status(_)) => "status",
            Some(Payload::Qr(_)) => "qr",
            Some(Payload::PairingCode(_)) => "pairing_code",
            Some(Payload::Ready(_)) => "ready",
            Some(Payload::Disconnected(_)) => "disconnected",
            Some(Payload::Message(_)) => "message",
            Some(Payload::Receipt(_)) => "receipt",
            Some(Payload::MessageUndecryptable(_)) => "message_undecryptable",
            Some(Payload::MessageSent(_)) => "message_sent",
            None => "none",
        }
    }

    pub fn status(&self) -> Option<(SessionStatus, v1::ReasonCode)> {
        match &self.event.payload {
            Some(Payload::Status(s)) => Some((
                SessionStatus::try_from(s.status).unwrap_or(SessionStatus::Unspecified),
                v1::ReasonCode::try_from(s.reason).unwrap_or(v1::ReasonCode::Unspecified),
            )),
            _ => None,
        }
    }
}

/// One fleet at a time per test binary: several fleets (each with its NATS, coordinators
/// and workers) at once on a 2-core machine starve each other's heartbeats.
static ONE_FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What [`Fleet::start_with`] runs.
#[derive(Debug, Clone)]
pub struct FleetSetup {
    /// A 3-node NATS cluster (`scripts/nats-cluster.sh`) instead of one private server; the
    /// event stream is created with 3 replicas and the backend reads events from it (an
    /// ordered consumer that resumes after outages), so no event is lost to a reconnect.
    pub nats_cluster: bool,
    /// The cluster's nodes do not tell clients about the other nodes (partition tests);
    /// the backend then connects to nodes 1 and 2 only.
    pub nats_no_advertise: bool,
    /// A private PostgreSQL server (stoppable) instead of a schema on the shared one.
    pub private_pg: bool,
    /// A private S3 server (stoppable) instead of a prefix on the shared one.
    pub private_s3: bool,
    /// Coordinators started at once.
    pub coordinators: usize,
}

impl Default for FleetSetup {
    fn default() -> Self {
        FleetSetup {
            nats_cluster: false,
            nats_no_advertise: false,
            private_pg: false,
            private_s3: false,
            coordinators: 1,
        }
    }
}

pub struct Fleet {
    // Fields drop in this order: the private services stop before their temp dir (their
    // pid files) goes.
    pub cluster: Option<NatsCluster>,
    pub private_pg: Option<PrivatePg>,
    pub private_s3: Option<PrivateS3>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    /// The (first) NATS server.
    pub nats_url: String,
    /// Every NATS server (one, or the cluster's three).
    pub nats_urls: Vec<String>,
    /// The servers coordinators started from now on are given (default: all).
    pub coordinator_urls: Vec<String>,
    /// The servers workers started from now on are given (default: all).
    pub worker_urls: Vec<String>,
    /// Extra flags for coordinators started from now on.
    pub coordinator_extra: Vec<String>,
    /// Extra flags for workers started from now on.
    pub worker_extra: Vec<String>,
    _nats: Option<Proc>,
    pub pg_url: String,
    pub schema: String,
    pub s3: S3Config,
    pub sim: Simulator,
    pub backend: async_nats::Client,
    pub events: Arc<Mutex<Vec<Seen>>>,
    pub coordinators: Vec<Proc>,
    pub workers: HashMap<String, Proc>,
    /// `WAFLEET_LOG` for workers started from now on (`None`: the session worker at
    /// `trace`, for failure messages; benchmarks set `info`).
    pub worker_log: Option<String>,
    event_task: tokio::task::JoinHandle<()>,
}

impl Fleet {
    /// NATS, a schema, an S3 prefix, the simulator and one coordinator.
    pub async fn start() -> Fleet {
        Fleet::start_with(FleetSetup::default()).await
    }

    /// A fleet on the services `setup` asks for.
    pub async fn start_with(setup: FleetSetup) -> Fleet {
        let turn = ONE_FLEET.lock().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let (nats, cluster, nats_urls) = if setup.nats_cluster {
            let cluster = tokio::task::block_in_place(|| {
                NatsCluster::start(&dir.path().join("nats"), setup.nats_no_advertise)
            });
            let urls = cluster.urls();
            (None, Some(cluster), urls)
        } else {
            let (proc, url) = Self::single_nats(dir.path());
            (Some(proc), None, vec![url])
        };
        let nats_url = nats_urls[0].clone();
        let (private_pg, pg_url) = if setup.private_pg {
            // The postgres user runs the server: it must reach the directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod temp dir");
            let pg = tokio::task::block_in_place(|| PrivatePg::start(&dir.path().join("pg")));
            let url = pg.url.clone();
            (Some(pg), url)
        } else {
            (None, required_env("WAFLEET_PG_URL"))
        };
        let (private_s3, s3_endpoint) = if setup.private_s3 {
            let s3 = tokio::task::block_in_place(|| PrivateS3::start(&dir.path().join("s3")));
            let endpoint = s3.endpoint.clone();
            (Some(s3), endpoint)
        } else {
            (None, required_env("WAFLEET_S3_ENDPOINT"))
        };
        let backend = if setup.nats_cluster {
            let options = || {
                async_nats::ConnectOptions::new()
                    .max_reconnects(None)
                    .reconnect_delay_callback(|n| {
                        Duration::from_millis((100 * n as u64).clamp(100, 500))
                    })
            };
            let urls = if setup.nats_no_advertise {
                nats_urls[..2].to_vec()
            } else {
                nats_urls.clone()
            };
            eventually(Duration::from_secs(20), "NATS cluster up", || async {
                options().connect(urls.clone()).await.ok()
            })
            .await
        } else {
            eventually(Duration::from_secs(10), "nats-server up", || async {
                async_nats::connect(&nats_url).await.ok()
            })
            .await
        };
        let schema = unique("fleet_t");
        let (client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create schema");
        let mut s3 = S3Config::from_lookup(|name| match name {
            "WAFLEET_S3_ENDPOINT" => Some(s3_endpoint.clone()),
            _ => std::env::var(name).ok().filter(|v| !v.is_empty()),
        })
        .expect("s3 config");
        s3.prefix = format!("{}/", unique("fleet-test-"));
        let sim = Simulator::start(SimConfig::default())
            .await
            .expect("simulator");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let event_task = if setup.nats_cluster {
            // The stream first, with a replica on every node (workers leave an existing
            // stream as it is); then read it from the start, resuming after outages.
            let js = async_nats::jetstream::new(backend.clone());
            let config = EventStreamConfig {
                replicas: 3,
                ..EventStreamConfig::default()
            }
            .to_nats();
            eventually(Duration::from_secs(30), "the R3 event stream", || async {
                js.get_or_create_stream(config.clone()).await.ok()
            })
            .await;
            tokio::spawn(collect_from_stream(js, sink))
        } else {
            let mut subscription = backend
                .subscribe(format!("wafleet.v1.{TENANT}.evt.>"))
                .await
                .expect("subscribe to events");
            tokio::spawn(async move {
                while let Some(message) = subscription.next().await {
                    match decode_event_message(&message) {
                        Ok(event) => sink.lock().expect("events").push(Seen::received(event)),
                        Err(e) => panic!("a worker published an invalid event: {e}"),
                    }
                }
            })
        };
        backend.flush().await.expect("flush");
        let mut fleet = Fleet {
            _turn: turn,
            dir,
            nats_url,
            coordinator_urls: nats_urls.clone(),
            worker_urls: nats_urls.clone(),
            nats_urls,
            coordinator_extra: Vec::new(),
            worker_extra: Vec::new(),
            _nats: nats,
            cluster,
            private_pg,
            private_s3,
            pg_url,
            schema,
            s3,
            sim,
            backend,
            events,
            coordinators: Vec::new(),
            workers: HashMap::new(),
            worker_log: None,
            event_task,
        };
        for _ in 0..setup.coordinators {
            fleet.start_coordinator();
        }
        fleet
    }

    /// One nats-server with JetStream on a free port, storing under `dir`.
    fn single_nats(dir: &std::path::Path) -> (Proc, String) {
        let nats_bin = required_env("WAFLEET_NATS_SERVER");
        let port = free_port();
        let nats_dir = dir.join("nats");
        std::fs::create_dir_all(&nats_dir).expect("nats dir");
        let log = dir.join("nats.log");
        let child = Command::new(&nats_bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&nats_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("nats log"))
            .spawn()
            .expect("start nats-server");
        let proc = Proc {
            name: "nats".into(),
            child,
            stdout: Arc::default(),
            log,
        };
        (proc, format!("nats://127.0.0.1:{port}"))
    }

    pub fn start_coordinator(&mut self) {
        let name = format!("coordinator-{}", self.coordinators.len());
        let heartbeat = format!("{}", HEARTBEAT_MS as f64 / 1000.0);
        let mut args: Vec<String> = vec!["coordinator".to_string()];
        args.extend(["--nats-url".to_string(), self.coordinator_urls.join(",")]);
        args.extend(
            [
                "--pg-url",
                &self.pg_url,
                "--pg-schema",
                &self.schema,
                "--heartbeat-interval",
                &heartbeat,
                "--missed-heartbeats",
                &MISSED_HEARTBEATS.to_string(),
                "--lease-ttl",
                &LEASE_TTL_S.to_string(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(self.coordinator_extra.iter().cloned());
        // The coordinator purges deleted sessions' blobs: the same bucket and prefix.
        let env = self.s3_env();
        let proc = spawn(&name, &args, &env, self.dir.path());
        self.coordinators.push(proc);
    }

    fn s3_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WAFLEET_S3_ENDPOINT", self.s3.endpoint.clone()),
            ("WAFLEET_S3_BUCKET", self.s3.bucket.clone()),
            ("WAFLEET_S3_PREFIX", self.s3.prefix.clone()),
        ]
    }

    /// Starts `wafleet worker` and waits until it takes leases.
    pub async fn start_worker(&mut self, id: &str, capacity: u32) {
        self.start_worker_with_key(id, capacity, MASTER_KEY).await
    }

    pub async fn start_worker_with_key(&mut self, id: &str, capacity: u32, key: &str) {
        self.start_worker_with(id, capacity, key, &[]).await
    }

    /// Starts `wafleet worker` with extra flags (e.g. `--blob-dir DIR`).
    pub async fn start_worker_with(&mut self, id: &str, capacity: u32, key: &str, extra: &[&str]) {
        let urls = self.worker_urls.clone();
        self.start_worker_on(id, capacity, key, &urls, extra).await
    }

    /// Starts `wafleet worker` given only the NATS servers `urls`, with extra flags.
    pub async fn start_worker_on(
        &mut self,
        id: &str,
        capacity: u32,
        key: &str,
        urls: &[String],
        extra: &[&str],
    ) {
        let mut args: Vec<String> = vec!["worker".to_string()];
        args.extend(["--nats-url".to_string(), urls.join(",")]);
        args.extend(
            [
                "--worker-id",
                id,
                "--capacity",
                &capacity.to_string(),
                "--server",
                &self.sim.ws_url(),
                "--root-key",
                &hex::encode(self.sim.root_public_key()),
                "--heartbeat-ms",
                &HEARTBEAT_MS.to_string(),
                // Heartbeats renew every listed lease; these renewals are the fallback.
                "--renew-ms",
                &RENEW_MS.to_string(),
                "--http",
                "127.0.0.1:0",
                "--backoff-base-ms",
                "100",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(self.worker_extra.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut env = self.s3_env();
        env.push(("WAFLEET_MASTER_KEY", key.to_string()));
        if let Some(log) = &self.worker_log {
            env.push(("WAFLEET_LOG", log.clone()));
        }
        let proc = spawn(id, &args, &env, self.dir.path());
        let lines = Arc::clone(&proc.stdout);
        self.workers.insert(id.to_string(), proc);
        let what = format!("worker {id} ready");
        eventually(Duration::from_secs(20), &what, || {
            let lines = Arc::clone(&lines);
            async move {
                let lines = lines.lock().expect("lines");
                lines
                    .iter()
                    .any(|l| l.contains("worker_ready"))
                    .then_some(())
            }
        })
        .await;
    }

    /// The worker's HTTP address (from its ready line).
    pub fn worker_http(&self, id: &str) -> String {
        let lines = self.workers[id].stdout.lock().expect("lines");
        let line = lines
            .iter()
            .find(|l| l.contains("worker_ready"))
            .expect("ready line");
        let value: serde_json::Value = serde_json::from_str(line).expect("ready json");
        value["http"].as_str().expect("http").to_string()
    }

    pub fn address(session: &str) -> SessionAddress {
        SessionAddress::new(TENANT, session).expect("address")
    }

    /// Sends a command (JSON) and returns the reply; retries while no coordinator leads.
    pub async fn command(&self, session: &str, verb: CommandVerb, json: &str) -> v1::CommandReply {
        let subject = Self::address(session).command_subject(verb).to_string();
        self.raw_command(&subject, json.as_bytes(), Some(CONTENT_TYPE_JSON))
            .await
    }

    pub async fn raw_command(
        &self,
        subject: &str,
        payload: &[u8],
        content_type: Option<&str>,
    ) -> v1::CommandReply {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut headers = HeaderMap::new();
            if let Some(ct) = content_type {
                headers.insert(CONTENT_TYPE_HEADER, ct);
            }
            let request = async_nats::Request::new()
                .payload(payload.to_vec().into())
                .headers(headers)
                .timeout(Some(Duration::from_secs(10)));
            match self
                .backend
                .send_request(subject.to_string(), request)
                .await
            {
                Ok(reply) => {
                    let ct = reply
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(CONTENT_TYPE_HEADER))
                        .map(|v| v.as_str().to_string());
                    let ct = ContentType::from_header(ct.as_deref()).expect("reply content type");
                    return decode_reply(&reply.payload, Some(ct.header_value())).expect("reply");
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no reply to {subject}: {e}"),
            }
        }
    }

    /// create + start with fresh command ids.
    pub async fn create_and_start(&self, session: &str) {
        let reply = self
            .command(
                session,
                CommandVerb::Create,
                &format!(r#"{{"commandId":"{}"}}"#, unique("create-")),
            )
            .await;
        assert!(reply.error().is_none(), "create {session}: {reply:?}");
        let reply = self
            .command(
                session,
                CommandVerb::Start,
                &format!(r#"{{"commandId":"{}"}}"#, unique("start-")),
            )
            .await;
        assert!(reply.error().is_none(), "start {session}: {reply:?}");
    }

    pub async fn simple(&self, session: &str, verb: CommandVerb) -> v1::CommandReply {
        self.command(
            session,
            verb,
            &format!(r#"{{"commandId":"{}"}}"#, unique("cmd-")),
        )
        .await
    }

    pub fn events_of(&self, session: &str) -> Vec<Seen> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter(|s| s.event.session == session)
            .cloned()
            .collect()
    }

    /// Waits for an event of `session` matching `pred`, and returns it.
    pub async fn wait_event(
        &self,
        session: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&Seen) -> bool,
    ) -> Seen {
        let what = format!("{session}: {what}");
        eventually(within, &what, || {
            let found = self.events_of(session).into_iter().find(|s| pred(s));
            async move { found }
        })
        .await
    }

    /// Scans the session's newest QR with a new phone (a QR from a socket that has since
    /// closed is refused: the newest one is tried again), then waits for WORKING.
    pub async fn link_by_qr(&self, session: &str, phone: &str) -> String {
        self.sim.add_phone(phone).expect("add phone");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.wait_event(session, Duration::from_secs(30), "a QR event", |s| {
                s.kind() == "qr"
            })
            .await;
            let newest = self
                .events_of(session)
                .into_iter()
                .filter(|s| s.kind() == "qr")
                .max_by_key(|s| (s.event.epoch, s.event.sequence))
                .expect("a QR event");
            let Some(Payload::Qr(code)) = &newest.event.payload else {
                unreachable!()
            };
            match self.sim.scan_qr(phone, &code.code).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{session}: scan refused ({e}); trying the newest QR again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{session}: scan: {e}\n{}", self.logs()),
            }
        }
        let ready = self
            .wait_event(session, Duration::from_secs(60), "WORKING", |s| {
                s.status().map(|(st, _)| st) == Some(SessionStatus::Working)
            })
            .await;
        ready.event.worker_id
    }

    /// The latest status event of a session.
    pub fn last_status(&self, session: &str) -> Option<Seen> {
        self.events_of(session)
            .into_iter()
            .filter(|s| s.status().is_some())
            .max_by_key(|s| (s.event.epoch, s.event.sequence))
    }

    pub fn blob_store(&self) -> S3BlobStore {
        S3BlobStore::new(&self.s3)
    }

    pub fn blob_id(session: &str) -> BlobId {
        BlobId::for_tenant_session(TENANT, session).expect("blob id")
    }

    pub async fn blob_bytes(&self, session: &str) -> Option<Vec<u8>> {
        self.blob_store()
            .load(&Self::blob_id(session))
            .await
            .expect("S3 load")
            .map(|b| b.bytes)
    }

    /// The registry row of a session: (status, reason, epoch, worker, jid).
    pub async fn registry_row(
        &self,
        session: &str,
    ) -> Option<(i32, i32, i64, Option<String>, String)> {
        let (client, connection) = tokio_postgres::connect(&self.pg_url, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        let row = client
            .query_opt(
                &format!(
                    "SELECT status, reason, epoch, worker_id, jid FROM {}.sessions WHERE tenant = $1 AND session = $2",
                    self.schema
                ),
                &[&TENANT, &session],
            )
            .await
            .ok()
            .flatten()?;
        Some((row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
    }

    pub fn kill_worker(&mut self, id: &str) {
        if let Some(mut worker) = self.workers.remove(id) {
            worker.signal("KILL");
            let _ = worker.wait_exit(Duration::from_secs(5));
        }
    }

    /// Logs of every process, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.coordinators.iter().chain(self.workers.values()) {
            let text = p.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last 40 lines)\n", p.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub async fn finish(self) {
        self.event_task.abort();
        drop(self.workers);
        drop(self.coordinators);
        if let Ok((client, connection)) =
            tokio_postgres::connect(&self.pg_url, tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
                .await;
        }
        self.sim.shutdown().await;
    }
}

/// Reads the event stream from the start into `sink`, with an ordered consumer that is
/// made again (from the next sequence) whenever it fails: events published while the
/// backend was cut off are read once it is back.
async fn collect_from_stream(js: async_nats::jetstream::Context, sink: Arc<Mutex<Vec<Seen>>>) {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let mut next = 1u64;
    loop {
        let messages = match js.get_stream(EVENT_STREAM).await {
            Ok(stream) => match stream
                .create_consumer(OrderedConfig {
                    filter_subject: format!("wafleet.v1.{TENANT}.evt.>"),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    ..OrderedConfig::default()
                })
                .await
            {
                Ok(consumer) => consumer.messages().await.ok(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        if let Some(mut messages) = messages {
            while let Some(item) = messages.next().await {
                let Ok(message) = item else { break };
                if let Ok(info) = message.info() {
                    if info.stream_sequence < next {
                        continue;
                    }
                    next = info.stream_sequence + 1;
                }
                match decode_event_message(&message.message) {
                    Ok(event) => sink.lock().expect("events").push(Seen::received(event)),
                    Err(e) => panic!("a worker published an invalid event: {e}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
