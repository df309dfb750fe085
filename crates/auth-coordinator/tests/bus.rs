//! The coordinator on real NATS (a private nats-server per test) and PostgreSQL (a schema
//! per test), with test workers that are plain async-nats clients speaking the bus-schema
//! messages.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use common::{eventually, nats_server_bin, pg_url, NatsServer, TestSchema};
use futures_util::StreamExt;
use wafleet_auth_coordinator::service::NatsLink;
use wafleet_auth_coordinator::{Coordinator, CoordinatorConfig, Leadership, Registry};
use wafleet_blob::{BlobStore, FsBlobStore, SaveCondition, StoreError};
use wafleet_bus_schema::codec::{decode_reply, encode, ContentType};
use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::time::timestamp;
use wafleet_bus_schema::v1::{self, ErrorCode, SessionStatus};
use wafleet_bus_schema::{
    decode_sys, subject, CommandVerb, SessionAddress, SysKind, SysMessage, SysSubject, WorkerId,
    CONTENT_TYPE_HEADER, CONTENT_TYPE_JSON,
};

const HEARTBEAT: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(20);

struct Fleet {
    schema: TestSchema,
    nats: NatsServer,
    /// Set when the fleet runs on a private PostgreSQL (outage tests).
    pg: Option<Arc<common::PrivatePg>>,
    registry: Registry,
    backend: async_nats::Client,
    shutdown: tokio::sync::watch::Sender<bool>,
    coordinator: tokio::task::JoinHandle<()>,
}

impl Fleet {
    async fn start() -> Option<Fleet> {
        Fleet::start_with(None).await
    }

    /// A fleet whose coordinator purges deleted sessions' blobs from `blobs`.
    async fn start_with(blobs: Option<Arc<dyn BlobStore>>) -> Option<Fleet> {
        Fleet::start_full(blobs, None, |_| {}, |_, _| async {}).await
    }

    /// A fleet with `tweak`ed pacing, on `pg` (a private PostgreSQL) or the shared one;
    /// `before` runs on the registry (and the NATS server) before the coordinator starts.
    async fn start_full<F, Fut>(
        blobs: Option<Arc<dyn BlobStore>>,
        pg: Option<Arc<common::PrivatePg>>,
        tweak: impl FnOnce(&mut CoordinatorConfig),
        before: F,
    ) -> Option<Fleet>
    where
        F: FnOnce(Registry, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let url = match &pg {
            Some(pg) => pg.url(),
            None => pg_url()?,
        };
        let bin = nats_server_bin()?;
        let schema = TestSchema::create(&url).await;
        let nats = NatsServer::start(&bin).await;
        let registry = schema.registry().await;
        let mut config = CoordinatorConfig {
            heartbeat_interval: HEARTBEAT,
            missed_heartbeats: 3,
            lease_ttl: Duration::from_secs(10),
            worker_reply_timeout: Duration::from_secs(2),
            ..CoordinatorConfig::default()
        };
        tweak(&mut config);
        before(registry.clone(), nats.url.clone()).await;
        let link = NatsLink::new();
        let mut coordinator = Coordinator::new(
            registry.clone(),
            nats.fast_client(&link).await,
            config.clone(),
        )
        .with_nats_link(link);
        if let Some(blobs) = blobs {
            coordinator = coordinator.with_blob_store(blobs);
        }
        let leadership = Leadership::start_with(
            schema.config().pg_config().expect("pg config"),
            config.leadership(),
        );
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let coordinator = tokio::spawn(async move {
            coordinator
                .run(leadership, shutdown_rx)
                .await
                .expect("coordinator run");
        });
        let backend = nats.client().await;
        Some(Fleet {
            schema,
            nats,
            pg,
            registry,
            backend,
            shutdown,
            coordinator,
        })
    }

    /// Sends a command as JSON and returns the reply; retries while no coordinator
    /// listens yet (before it leads).
    async fn command(&self, session: &str, verb: CommandVerb, json: &str) -> v1::CommandReply {
        let address = SessionAddress::new("acme", session).expect("address");
        self.raw_command(&address.command_subject(verb).to_string(), json.as_bytes())
            .await
    }

    async fn raw_command(&self, subject: &str, payload: &[u8]) -> v1::CommandReply {
        let subject = subject.to_string();
        let payload = payload.to_vec();
        eventually(WAIT, "a command reply", || {
            let subject = subject.clone();
            let payload = payload.clone();
            async move {
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE_HEADER, CONTENT_TYPE_JSON);
                let reply = self
                    .backend
                    .request_with_headers(subject, headers, payload.into())
                    .await
                    .ok()?;
                let content_type = reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(CONTENT_TYPE_HEADER))
                    .map(|v| v.as_str().to_string());
                assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE_JSON));
                Some(decode_reply(&reply.payload, content_type.as_deref()).expect("reply decodes"))
            }
        })
        .await
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.coordinator.await;
        drop(self.nats);
        self.schema.drop_schema().await;
        drop(self.pg);
    }
}

fn session_of(reply: &v1::CommandReply) -> v1::SessionInfo {
    match &reply.outcome {
        Some(v1::command_reply::Outcome::Session(s)) => s.clone(),
        other => panic!("expected a session, got {other:?}"),
    }
}

fn error_code(reply: &v1::CommandReply) -> Option<ErrorCode> {
    reply
        .error()
        .map(|e| ErrorCode::try_from(e.code).expect("known code"))
}

/// A worker: answers grants (accepting), revokes and forwarded commands, and heartbeats
/// its leases. A plain NATS client speaking the bus-schema messages.
struct TestWorker {
    id: WorkerId,
    client: async_nats::Client,
    leases: Arc<Mutex<BTreeMap<(String, String), u64>>>,
    draining: Arc<Mutex<bool>>,
    /// While true, no heartbeats are sent.
    paused: Arc<Mutex<bool>>,
    /// Each heartbeat's send time and the acknowledgement it got.
    acks: Arc<Mutex<Vec<(tokio::time::Instant, internal::HeartbeatAck)>>>,
    /// Grants received.
    grants: Arc<Mutex<Vec<(tokio::time::Instant, String, u64)>>>,
    /// Release every accepted grant at once with this reason (a blob store outage).
    release_on_grant: Arc<Mutex<Option<v1::ReasonCode>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestWorker {
    async fn start(nats: &NatsServer, name: &str, capacity: u32) -> TestWorker {
        let id = WorkerId::new(name).expect("worker id");
        // The workers' NATS options: fast reconnects.
        let client = nats.fast_client(&NatsLink::new()).await;
        let leases: Arc<Mutex<BTreeMap<(String, String), u64>>> = Arc::default();
        let draining: Arc<Mutex<bool>> = Arc::default();
        let paused: Arc<Mutex<bool>> = Arc::default();
        let acks: Arc<Mutex<Vec<(tokio::time::Instant, internal::HeartbeatAck)>>> = Arc::default();
        let grants: Arc<Mutex<Vec<(tokio::time::Instant, String, u64)>>> = Arc::default();
        let release_on_grant: Arc<Mutex<Option<v1::ReasonCode>>> = Arc::default();
        let mut inbox = client
            .subscribe(subject::to_worker(&id))
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let listener = {
            let client = client.clone();
            let leases = leases.clone();
            let grants = grants.clone();
            let release_on_grant = release_on_grant.clone();
            let id = id.clone();
            tokio::spawn(async move {
                while let Some(message) = inbox.next().await {
                    let content_type = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(CONTENT_TYPE_HEADER))
                        .map(|v| v.as_str().to_string());
                    let Ok((_, sys)) = decode_sys(
                        message.subject.as_str(),
                        &message.payload,
                        content_type.as_deref(),
                    ) else {
                        panic!(
                            "the coordinator sent a malformed message on {}",
                            message.subject
                        );
                    };
                    let reply: Option<Vec<u8>> = match sys {
                        SysMessage::LeaseGrant(grant) => {
                            grants.lock().expect("grants").push((
                                tokio::time::Instant::now(),
                                grant.session.clone(),
                                grant.epoch,
                            ));
                            let release = *release_on_grant.lock().expect("release");
                            match release {
                                None => {
                                    leases.lock().expect("leases").insert(
                                        (grant.tenant.clone(), grant.session.clone()),
                                        grant.epoch,
                                    );
                                }
                                Some(reason) => {
                                    // Accept, then hand it back at once.
                                    let release = internal::LeaseRelease {
                                        tenant: grant.tenant.clone(),
                                        session: grant.session.clone(),
                                        epoch: grant.epoch,
                                        worker_id: id.as_str().to_string(),
                                        reason: reason as i32,
                                    };
                                    let subject =
                                        SysSubject::new(id.clone(), SysKind::LeaseRelease)
                                            .to_string();
                                    let client = client.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                        let payload = encode(&release, ContentType::Protobuf)
                                            .expect("encode");
                                        let _ = client.request(subject, payload.into()).await;
                                    });
                                }
                            }
                            let reply = internal::LeaseReply {
                                outcome: Some(internal::lease_reply::Outcome::Lease(grant)),
                            };
                            Some(encode(&reply, ContentType::Protobuf).expect("encode"))
                        }
                        SysMessage::LeaseRevoke(revoke) => {
                            let mut leases = leases.lock().expect("leases");
                            let key = (revoke.tenant.clone(), revoke.session.clone());
                            if leases.get(&key) == Some(&revoke.epoch) {
                                leases.remove(&key);
                            }
                            // Answers with the ended grant (the coordinator waits for it
                            // on delete, before purging the blob).
                            let reply = internal::LeaseReply {
                                outcome: Some(internal::lease_reply::Outcome::Lease(
                                    internal::LeaseGrant {
                                        tenant: revoke.tenant,
                                        session: revoke.session,
                                        epoch: revoke.epoch,
                                        worker_id: message
                                            .subject
                                            .as_str()
                                            .split('.')
                                            .nth(4)
                                            .unwrap_or_default()
                                            .to_string(),
                                        expires_at: None,
                                    },
                                )),
                            };
                            Some(encode(&reply, ContentType::Protobuf).expect("encode"))
                        }
                        SysMessage::Command(forwarded) => {
                            let held = leases
                                .lock()
                                .expect("leases")
                                .get(&(forwarded.tenant.clone(), forwarded.session.clone()))
                                .copied();
                            let reply = if held != Some(forwarded.epoch) {
                                v1::CommandReply::with_error("", ErrorCode::NotLeased, "not held")
                            } else {
                                v1::CommandReply::with_pairing_code(
                                    "",
                                    v1::PairingCodeIssued {
                                        code: "ABCD1234".into(),
                                        expires_at: None,
                                    },
                                )
                            };
                            Some(encode(&reply, ContentType::Protobuf).expect("encode"))
                        }
                        other => panic!("unexpected message to a worker: {other:?}"),
                    };
                    if let (Some(inbox), Some(reply)) = (message.reply, reply) {
                        client.publish(inbox, reply.into()).await.expect("reply");
                    }
                }
            })
        };
        let heartbeat = {
            let client = client.clone();
            let leases = leases.clone();
            let draining = draining.clone();
            let paused = paused.clone();
            let acks = acks.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let subject = SysSubject::new(id.clone(), SysKind::Heartbeat).to_string();
                loop {
                    if *paused.lock().expect("paused") {
                        tokio::time::sleep(HEARTBEAT).await;
                        continue;
                    }
                    let held = leases
                        .lock()
                        .expect("leases")
                        .iter()
                        .map(|((tenant, session), epoch)| internal::HeldLease {
                            tenant: tenant.clone(),
                            session: session.clone(),
                            epoch: *epoch,
                        })
                        .collect();
                    let heartbeat = internal::WorkerHeartbeat {
                        worker_id: id.as_str().to_string(),
                        capacity,
                        leases: held,
                        draining: *draining.lock().expect("draining"),
                        sent_at: Some(timestamp(std::time::SystemTime::now())),
                        version: "test".into(),
                    };
                    let payload = encode(&heartbeat, ContentType::Protobuf).expect("encode");
                    // A request: the acknowledgement is kept (see `acks`).
                    let sent = tokio::time::Instant::now();
                    let (client, subject, acks) = (client.clone(), subject.clone(), acks.clone());
                    tokio::spawn(async move {
                        let request = client.request(subject, payload.into());
                        if let Ok(Ok(reply)) = tokio::time::timeout(HEARTBEAT * 3, request).await {
                            if let Ok(ack) = wafleet_bus_schema::decode::<internal::HeartbeatAck>(
                                &reply.payload,
                                ContentType::Protobuf,
                            ) {
                                acks.lock().expect("acks").push((sent, ack));
                            }
                        }
                    });
                    tokio::time::sleep(HEARTBEAT).await;
                }
            })
        };
        TestWorker {
            id,
            client,
            leases,
            draining,
            paused,
            acks,
            grants,
            release_on_grant,
            tasks: vec![listener, heartbeat],
        }
    }

    fn epoch_of(&self, session: &str) -> Option<u64> {
        self.leases
            .lock()
            .expect("leases")
            .get(&("acme".to_string(), session.to_string()))
            .copied()
    }

    /// Drops a lease without a word (its socket closed on its own, as after an outage
    /// longer than the trust window): its heartbeats stop listing it.
    fn forget(&self, session: &str) {
        self.leases
            .lock()
            .expect("leases")
            .remove(&("acme".to_string(), session.to_string()));
    }

    fn pause_heartbeats(&self, paused: bool) {
        *self.paused.lock().expect("paused") = paused;
    }

    /// The acknowledgements of heartbeats sent at or after `since`.
    fn acks_since(
        &self,
        since: tokio::time::Instant,
    ) -> Vec<(tokio::time::Instant, internal::HeartbeatAck)> {
        self.acks
            .lock()
            .expect("acks")
            .iter()
            .filter(|(sent, _)| *sent >= since)
            .cloned()
            .collect()
    }

    /// Dies: stops heartbeating and answering.
    fn kill(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    /// Announces its shutdown (and heartbeats as draining from now on).
    async fn announce_shutdown(&self) {
        *self.draining.lock().expect("draining") = true;
        let shutdown = internal::WorkerShutdown {
            worker_id: self.id.as_str().to_string(),
            leases: Vec::new(),
            deadline: None,
        };
        let subject = SysSubject::new(self.id.clone(), SysKind::Shutdown).to_string();
        let payload = encode(&shutdown, ContentType::Protobuf).expect("encode");
        self.client
            .publish(subject, payload.into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn create_and_start(fleet: &Fleet, session: &str) -> v1::SessionInfo {
    let created = fleet
        .command(
            session,
            CommandVerb::Create,
            &format!(r#"{{"commandId": "create-{session}"}}"#),
        )
        .await;
    assert_eq!(session_of(&created).status, SessionStatus::Stopped as i32);
    let started = fleet
        .command(
            session,
            CommandVerb::Start,
            &format!(r#"{{"commandId": "start-{session}"}}"#),
        )
        .await;
    session_of(&started)
}

async fn holder(fleet: &Fleet, session: &str) -> Option<(String, u64)> {
    let address = SessionAddress::new("acme", session).expect("address");
    let record = fleet.registry.session(&address).await.expect("session");
    record
        .worker
        .map(|w| (w.as_str().to_string(), record.epoch))
}

#[tokio::test]
async fn a_started_session_is_leased_to_a_heartbeating_worker() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    let started = create_and_start(&fleet, "support-1").await;
    assert_eq!(started.status, SessionStatus::Starting as i32);
    let epoch = eventually(WAIT, "the worker to hold the lease", || async {
        worker.epoch_of("support-1")
    })
    .await;
    assert!(epoch >= 1);
    assert_eq!(
        holder(&fleet, "support-1").await,
        Some(("worker-0".to_string(), epoch))
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_dead_workers_sessions_move_to_another_worker_with_a_higher_epoch() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let mut first = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    let sessions = ["s1", "s2", "s3"];
    for s in sessions {
        create_and_start(&fleet, s).await;
    }
    let mut epochs = BTreeMap::new();
    for s in sessions {
        let epoch = eventually(WAIT, "worker-0 to hold every session", || async {
            first.epoch_of(s)
        })
        .await;
        epochs.insert(s, epoch);
    }
    let second = TestWorker::start(&fleet.nats, "worker-1", 10).await;
    first.kill();
    for s in sessions {
        let (worker, epoch) = eventually(WAIT, "the session to move to worker-1", || async {
            holder(&fleet, s).await.filter(|(w, _)| w == "worker-1")
        })
        .await;
        assert_eq!(worker, "worker-1");
        assert!(epoch > epochs[s], "{s}: {epoch} after {}", epochs[s]);
        let held = eventually(WAIT, "worker-1 to accept", || async { second.epoch_of(s) }).await;
        assert_eq!(held, epoch);
    }
    fleet.stop().await;
}

#[tokio::test]
async fn a_draining_workers_sessions_move() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let first = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    let sessions = ["d1", "d2"];
    for s in sessions {
        create_and_start(&fleet, s).await;
    }
    let mut epochs = BTreeMap::new();
    for s in sessions {
        let epoch = eventually(WAIT, "worker-0 to hold every session", || async {
            first.epoch_of(s)
        })
        .await;
        epochs.insert(s, epoch);
    }
    let second = TestWorker::start(&fleet.nats, "worker-1", 10).await;
    // worker-1 must be known before worker-0 drains, or nothing can take the sessions yet
    // (they then move on a later tick, which the test also accepts).
    first.announce_shutdown().await;
    for s in sessions {
        let epoch = eventually(WAIT, "the session to move to worker-1", || async {
            second.epoch_of(s)
        })
        .await;
        assert!(epoch > epochs[s]);
        assert_eq!(
            holder(&fleet, s).await,
            Some(("worker-1".to_string(), epoch))
        );
        // The draining worker was told to let go.
        eventually(WAIT, "worker-0 to get the revoke", || async {
            first.epoch_of(s).is_none().then_some(())
        })
        .await;
    }
    fleet.stop().await;
}

#[tokio::test]
async fn malformed_and_unknown_commands_get_typed_errors_and_change_nothing() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let subject = SessionAddress::new("acme", "support-1")
        .expect("address")
        .command_subject(CommandVerb::Create)
        .to_string();
    let reply = fleet.raw_command(&subject, b"{not json").await;
    assert_eq!(error_code(&reply), Some(ErrorCode::MalformedCommand));
    let reply = fleet
        .raw_command(&subject, br#"{"commandId": "c1", "bogus": 1}"#)
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::MalformedCommand));
    let reply = fleet
        .command("support-1", CommandVerb::Start, r#"{"commandId": "c2"}"#)
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::UnknownSession));
    let reply = fleet
        .command(
            "support-1",
            CommandVerb::RequestPairingCode,
            r#"{"commandId": "c3", "phoneNumber": "+15551234567"}"#,
        )
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::InvalidPhone));
    let reply = fleet
        .raw_command("wafleet.v1.acme.cmd.session.support-1.explode", b"{}")
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::InvalidSubject));
    // Nothing was created, and the malformed "c1" was not stored: it can still be used.
    let address = SessionAddress::new("acme", "support-1").expect("address");
    assert!(fleet.registry.session(&address).await.is_err());
    assert_eq!(
        fleet
            .registry
            .stored_reply("acme", "c1")
            .await
            .expect("read"),
        None
    );
    let reply = fleet
        .command("support-1", CommandVerb::Create, r#"{"commandId": "c1"}"#)
        .await;
    assert_eq!(session_of(&reply).status, SessionStatus::Stopped as i32);
    fleet.stop().await;
}

#[tokio::test]
async fn the_same_command_id_twice_gets_the_stored_reply() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let create = r#"{"commandId": "id-1", "metadata": {"team": "support"}}"#;
    let first = fleet
        .command("support-1", CommandVerb::Create, create)
        .await;
    assert!(!first.replayed);
    let info = session_of(&first);
    let second = fleet
        .command("support-1", CommandVerb::Create, create)
        .await;
    assert!(second.replayed);
    assert_eq!(session_of(&second), info);
    // Same id, another payload, verb or session: refused, nothing happens.
    let other = fleet
        .command(
            "support-1",
            CommandVerb::Create,
            r#"{"commandId": "id-1", "metadata": {"team": "sales"}}"#,
        )
        .await;
    assert_eq!(error_code(&other), Some(ErrorCode::IdempotencyKeyReused));
    let other = fleet
        .command(
            "support-2",
            CommandVerb::Create,
            r#"{"commandId": "id-1", "metadata": {"team": "support"}}"#,
        )
        .await;
    assert_eq!(error_code(&other), Some(ErrorCode::IdempotencyKeyReused));
    let address = SessionAddress::new("acme", "support-2").expect("address");
    assert!(fleet.registry.session(&address).await.is_err());
    let address = SessionAddress::new("acme", "support-1").expect("address");
    let record = fleet.registry.session(&address).await.expect("session");
    assert_eq!(
        record.metadata.get("team").map(String::as_str),
        Some("support")
    );
    // A fresh id for the same create is a new command: ALREADY_EXISTS.
    let again = fleet
        .command("support-1", CommandVerb::Create, r#"{"commandId": "id-2"}"#)
        .await;
    assert_eq!(error_code(&again), Some(ErrorCode::AlreadyExists));
    fleet.stop().await;
}

impl TestWorker {
    /// Sends a lease request (renew or release) and returns the coordinator's reply.
    async fn lease_request<M: wafleet_bus_schema::BusMessage>(
        &self,
        kind: SysKind,
        message: &M,
    ) -> internal::LeaseReply {
        let subject = SysSubject::new(self.id.clone(), kind).to_string();
        let payload = encode(message, ContentType::Protobuf).expect("encode");
        let reply = self
            .client
            .request(subject, payload.into())
            .await
            .expect("lease reply");
        wafleet_bus_schema::decode(&reply.payload, ContentType::Protobuf).expect("LeaseReply")
    }

    /// Lets go of a lease locally and tells the coordinator why.
    async fn release(
        &self,
        session: &str,
        epoch: u64,
        reason: v1::ReasonCode,
    ) -> internal::LeaseReply {
        self.leases
            .lock()
            .expect("leases")
            .remove(&("acme".to_string(), session.to_string()));
        let release = internal::LeaseRelease {
            tenant: "acme".into(),
            session: session.into(),
            epoch,
            worker_id: self.id.as_str().to_string(),
            reason: reason as i32,
        };
        self.lease_request(SysKind::LeaseRelease, &release).await
    }
}

fn granted_epoch(reply: &internal::LeaseReply) -> Option<u64> {
    match &reply.outcome {
        Some(internal::lease_reply::Outcome::Lease(grant)) => Some(grant.epoch),
        _ => None,
    }
}

#[tokio::test]
async fn releases_settle_or_regrant_and_stale_renewals_are_refused() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    create_and_start(&fleet, "r1").await;
    let first = eventually(WAIT, "the lease", || async { worker.epoch_of("r1") }).await;

    // A routine release (lost connection): the session is granted again, higher epoch.
    let reply = worker
        .release("r1", first, v1::ReasonCode::ConnectionLost)
        .await;
    assert_eq!(granted_epoch(&reply), Some(first));
    let second = eventually(WAIT, "a new grant", || async { worker.epoch_of("r1") }).await;
    assert!(second > first);

    // The old epoch can neither renew nor release.
    let renew = internal::LeaseRenew {
        tenant: "acme".into(),
        session: "r1".into(),
        epoch: first,
        worker_id: "worker-0".into(),
    };
    let reply = worker.lease_request(SysKind::LeaseRenew, &renew).await;
    match reply.outcome {
        Some(internal::lease_reply::Outcome::Error(e)) => {
            assert_eq!(e.code, ErrorCode::StaleEpoch as i32)
        }
        other => panic!("stale renew: {other:?}"),
    }
    let renew = internal::LeaseRenew {
        epoch: second,
        ..renew
    };
    let reply = worker.lease_request(SysKind::LeaseRenew, &renew).await;
    assert_eq!(granted_epoch(&reply), Some(second));

    // Logged out on the phone: released for good, settled, not granted again.
    let reply = worker
        .release("r1", second, v1::ReasonCode::LoggedOut)
        .await;
    assert_eq!(granted_epoch(&reply), Some(second));
    tokio::time::sleep(HEARTBEAT * 5).await;
    assert_eq!(worker.epoch_of("r1"), None);
    let address = SessionAddress::new("acme", "r1").expect("address");
    let record = fleet.registry.session(&address).await.expect("session");
    assert_eq!(record.status, SessionStatus::Stopped);
    assert_eq!(record.reason, v1::ReasonCode::LoggedOut);
    assert_eq!((record.worker, record.epoch), (None, second));
    assert!(!record.desired_running);
    fleet.stop().await;
}

#[tokio::test]
async fn forwarded_commands_stop_and_delete() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;

    // Not running: a pairing code needs the holder's socket.
    fleet
        .command("p1", CommandVerb::Create, r#"{"commandId": "f0"}"#)
        .await;
    let reply = fleet
        .command(
            "p1",
            CommandVerb::RequestPairingCode,
            r#"{"commandId": "f1", "phoneNumber": "15551234567"}"#,
        )
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::InvalidState));

    let started = fleet
        .command("p1", CommandVerb::Start, r#"{"commandId": "f2"}"#)
        .await;
    assert_eq!(session_of(&started).status, SessionStatus::Starting as i32);
    let epoch = eventually(WAIT, "the lease", || async { worker.epoch_of("p1") }).await;
    // The worker answers only for the epoch it holds, so a code means it was forwarded
    // to the holder at the current epoch.
    let reply = fleet
        .command(
            "p1",
            CommandVerb::RequestPairingCode,
            r#"{"commandId": "f3", "phoneNumber": "15551234567"}"#,
        )
        .await;
    assert_eq!(reply.command_id, "f3");
    match &reply.outcome {
        Some(v1::command_reply::Outcome::PairingCode(code)) => assert_eq!(code.code, "ABCD1234"),
        other => panic!("expected a pairing code, got {other:?}"),
    }

    // Stop: lease ended and revoked, epoch kept, not granted again.
    let stopped = session_of(
        &fleet
            .command("p1", CommandVerb::Stop, r#"{"commandId": "f4"}"#)
            .await,
    );
    assert_eq!(stopped.status, SessionStatus::Stopped as i32);
    assert_eq!((stopped.worker_id.as_str(), stopped.epoch), ("", epoch));
    eventually(WAIT, "the revoke", || async {
        worker.epoch_of("p1").is_none().then_some(())
    })
    .await;
    tokio::time::sleep(HEARTBEAT * 5).await;
    assert_eq!(holder(&fleet, "p1").await, None);
    // Stopping a stopped session succeeds.
    let again = fleet
        .command("p1", CommandVerb::Stop, r#"{"commandId": "f5"}"#)
        .await;
    assert_eq!(session_of(&again).status, SessionStatus::Stopped as i32);

    // Start again: a higher epoch. Delete: gone, the holder told to let go.
    fleet
        .command("p1", CommandVerb::Start, r#"{"commandId": "f6"}"#)
        .await;
    let next = eventually(WAIT, "a new lease", || async { worker.epoch_of("p1") }).await;
    assert!(next > epoch);
    let deleted = session_of(
        &fleet
            .command("p1", CommandVerb::Delete, r#"{"commandId": "f7"}"#)
            .await,
    );
    assert_eq!(deleted.status, SessionStatus::Stopped as i32);
    eventually(WAIT, "the revoke", || async {
        worker.epoch_of("p1").is_none().then_some(())
    })
    .await;
    let address = SessionAddress::new("acme", "p1").expect("address");
    assert!(fleet.registry.session(&address).await.is_err());
    let reply = fleet
        .command("p1", CommandVerb::Start, r#"{"commandId": "f8"}"#)
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::UnknownSession));
    fleet.stop().await;
}

#[tokio::test]
async fn a_repeat_in_the_other_encoding_is_the_same_command() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let first = fleet
        .command(
            "e1",
            CommandVerb::Create,
            r#"{"commandId": "enc-1", "metadata": {"a": "1"}}"#,
        )
        .await;
    assert!(!first.replayed);
    // The same command as protobuf: compared as decoded messages, so a replay.
    let create = v1::CreateSession {
        command_id: "enc-1".into(),
        metadata: [("a".to_string(), "1".to_string())].into_iter().collect(),
    };
    let payload = encode(&create, ContentType::Protobuf).expect("encode");
    let subject = SessionAddress::new("acme", "e1")
        .expect("address")
        .command_subject(CommandVerb::Create)
        .to_string();
    let reply = fleet
        .backend
        .request(subject, payload.into())
        .await
        .expect("reply");
    let reply = decode_reply(&reply.payload, None).expect("protobuf reply");
    assert!(reply.replayed);
    assert_eq!(session_of(&reply), session_of(&first));
    fleet.stop().await;
}

#[tokio::test]
async fn the_holders_events_update_the_registry_and_stale_ones_do_not() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    create_and_start(&fleet, "ev1").await;
    create_and_start(&fleet, "ev2").await;
    let ev2 = eventually(WAIT, "the lease", || async { worker.epoch_of("ev2") }).await;
    let first = eventually(WAIT, "the lease", || async { worker.epoch_of("ev1") }).await;
    // A routine release, so the session is granted again and `first` is an older epoch.
    worker
        .release("ev1", first, v1::ReasonCode::ConnectionLost)
        .await;
    let epoch = eventually(WAIT, "a new lease", || async { worker.epoch_of("ev1") }).await;
    assert!(epoch > first);
    let publish =
        |session: &str, epoch: u64, sequence: u64, payload: v1::session_event::Payload| {
            let event = v1::SessionEvent {
                tenant: "acme".into(),
                session: session.into(),
                epoch,
                sequence,
                timestamp: Some(timestamp(std::time::SystemTime::now())),
                worker_id: "worker-0".into(),
                payload: Some(payload),
            };
            let publication =
                wafleet_bus_schema::nats::event_publication(&event, ContentType::Protobuf)
                    .expect("event");
            let client = worker.client.clone();
            async move {
                client
                    .publish_with_headers(
                        publication.subject.to_string(),
                        publication.headers,
                        publication.payload.into(),
                    )
                    .await
                    .expect("publish");
                client.flush().await.expect("flush");
            }
        };
    let address = SessionAddress::new("acme", "ev1").expect("address");
    publish(
        "ev1",
        epoch,
        1,
        v1::session_event::Payload::Ready(v1::Ready {
            jid: "15551234567:12@s.whatsapp.net".into(),
            ..Default::default()
        }),
    )
    .await;
    let record = eventually(WAIT, "WORKING", || async {
        let record = fleet.registry.session(&address).await.expect("session");
        (record.status == SessionStatus::Working).then_some(record)
    })
    .await;
    assert_eq!(record.jid, "15551234567:12@s.whatsapp.net");
    // An event of an older epoch (a worker that lost the lease) changes nothing.
    publish(
        "ev1",
        first,
        1,
        v1::session_event::Payload::Status(v1::SessionStatusChanged {
            status: SessionStatus::Failed as i32,
            reason: v1::ReasonCode::Replaced as i32,
            message: String::new(),
        }),
    )
    .await;
    // Then a current event of another session from the same connection: once it has
    // applied, the stale one was handled before it (NATS keeps one publisher's order).
    publish(
        "ev2",
        ev2,
        1,
        v1::session_event::Payload::Status(v1::SessionStatusChanged {
            status: SessionStatus::Starting as i32,
            reason: v1::ReasonCode::RestartRequired as i32,
            message: String::new(),
        }),
    )
    .await;
    let ev2_address = SessionAddress::new("acme", "ev2").expect("address");
    eventually(WAIT, "the current event", || async {
        let record = fleet.registry.session(&ev2_address).await.expect("session");
        (record.reason == v1::ReasonCode::RestartRequired).then_some(())
    })
    .await;
    let record = fleet.registry.session(&address).await.expect("session");
    assert_eq!(record.status, SessionStatus::Working);
    assert_eq!(record.reason, v1::ReasonCode::Unspecified);
    fleet.stop().await;
}

// ---------------------------------------------------------------------------------------
// Blob commits and the purge on delete.

fn lease_error_of(reply: &internal::LeaseReply) -> Option<(ErrorCode, String)> {
    match &reply.outcome {
        Some(internal::lease_reply::Outcome::Error(e)) => Some((
            ErrorCode::try_from(e.code).expect("known code"),
            e.message.clone(),
        )),
        _ => None,
    }
}

impl TestWorker {
    /// Commits a blob version of an acme session at `epoch`.
    async fn commit(&self, session: &str, epoch: u64, version: u64) -> internal::LeaseReply {
        let commit = internal::BlobCommit {
            tenant: "acme".into(),
            session: session.into(),
            epoch,
            worker_id: self.id.as_str().to_string(),
            version,
        };
        self.lease_request(SysKind::BlobCommit, &commit).await
    }
}

/// The version a worker writes as save `n` of `epoch`.
fn version(epoch: u64, n: u64) -> u64 {
    (epoch << 32) | n
}

#[tokio::test]
async fn blob_commits_are_fenced_by_the_lease_epoch_and_the_holder() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let mut first = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    create_and_start(&fleet, "b1").await;
    let e1 = eventually(WAIT, "the lease", || async { first.epoch_of("b1") }).await;
    let second = TestWorker::start(&fleet.nats, "worker-1", 10).await;

    // The holder at the current epoch commits, and gets its lease back.
    let reply = first.commit("b1", e1, version(e1, 1)).await;
    match &reply.outcome {
        Some(internal::lease_reply::Outcome::Lease(lease)) => {
            assert_eq!((lease.epoch, lease.worker_id.as_str()), (e1, "worker-0"));
            assert_eq!(
                (lease.tenant.as_str(), lease.session.as_str()),
                ("acme", "b1")
            );
        }
        other => panic!("commit at the current epoch: {other:?}"),
    }
    // The same version again, or a lower one: CONFLICT, naming the committed version.
    for v in [version(e1, 1), 1] {
        let (code, message) = lease_error_of(&first.commit("b1", e1, v).await).expect("refused");
        assert_eq!(code, ErrorCode::Conflict, "{message}");
        assert!(message.contains(&version(e1, 1).to_string()), "{message}");
    }
    assert_eq!(
        granted_epoch(&first.commit("b1", e1, version(e1, 2)).await),
        Some(e1)
    );
    // Another worker at the current epoch: not its lease.
    let (code, message) =
        lease_error_of(&second.commit("b1", e1, version(e1, 3)).await).expect("refused");
    assert_eq!(code, ErrorCode::NotLeased, "{message}");
    let (code, _) = lease_error_of(&first.commit("nope", 1, 1).await).expect("unknown session");
    assert_eq!(code, ErrorCode::UnknownSession);

    // Failover: worker-0 dies, worker-1 gets a higher epoch; worker-0's old epoch is
    // refused with STALE_EPOCH naming the current epoch, even with a higher version.
    first.kill();
    let (_, e2) = eventually(WAIT, "the session to move to worker-1", || async {
        holder(&fleet, "b1").await.filter(|(w, _)| w == "worker-1")
    })
    .await;
    assert!(e2 > e1);
    let (code, message) =
        lease_error_of(&first.commit("b1", e1, version(e1, 3)).await).expect("fenced");
    assert_eq!(code, ErrorCode::StaleEpoch);
    assert_eq!(message, format!("epoch {e2} is current"));
    let (code, _) = lease_error_of(&first.commit("b1", e1, version(e2, 9)).await).expect("fenced");
    assert_eq!(code, ErrorCode::StaleEpoch);
    // The new holder's first save of its epoch is above every version of the old one.
    assert_eq!(
        granted_epoch(&second.commit("b1", e2, version(e2, 1)).await),
        Some(e2)
    );
    let address = SessionAddress::new("acme", "b1").expect("address");
    let record = fleet.registry.session(&address).await.expect("session");
    assert_eq!(
        (record.blob_version, record.blob_epoch),
        (version(e2, 1), e2)
    );
    fleet.stop().await;
}

#[tokio::test]
async fn malformed_blob_commits_get_typed_error_replies() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    create_and_start(&fleet, "m1").await;
    let epoch = eventually(WAIT, "the lease", || async { worker.epoch_of("m1") }).await;
    let subject = SysSubject::new(worker.id.clone(), SysKind::BlobCommit).to_string();
    let json = |body: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, CONTENT_TYPE_JSON);
        (headers, body.as_bytes().to_vec())
    };
    let cases = [
        (HeaderMap::new(), b"\xff\xff".to_vec()),
        json("{not json"),
        json(
            r#"{"tenant": "acme", "session": "m1", "epoch": "1", "workerId": "worker-0", "version": "1", "extra": 1}"#,
        ),
        // Another worker's id on worker-0's subject.
        json(&format!(
            r#"{{"tenant": "acme", "session": "m1", "epoch": "{epoch}", "workerId": "worker-1", "version": "5"}}"#
        )),
        // No version.
        json(&format!(
            r#"{{"tenant": "acme", "session": "m1", "epoch": "{epoch}", "workerId": "worker-0"}}"#
        )),
        // A bad session name.
        json(&format!(
            r#"{{"tenant": "acme", "session": "m.1", "epoch": "{epoch}", "workerId": "worker-0", "version": "5"}}"#
        )),
    ];
    for (headers, payload) in cases {
        let is_json = headers.get(CONTENT_TYPE_HEADER).is_some();
        let reply = worker
            .client
            .request_with_headers(subject.clone(), headers, payload.clone().into())
            .await
            .expect("a reply");
        let content_type = if is_json {
            ContentType::Json
        } else {
            ContentType::Protobuf
        };
        let reply: internal::LeaseReply =
            wafleet_bus_schema::decode(&reply.payload, content_type).expect("LeaseReply");
        let (code, message) = lease_error_of(&reply)
            .unwrap_or_else(|| panic!("{:?} was accepted", String::from_utf8_lossy(&payload)));
        assert_eq!(code, ErrorCode::MalformedCommand, "{message}");
    }
    // Nothing was committed.
    let address = SessionAddress::new("acme", "m1").expect("address");
    let record = fleet.registry.session(&address).await.expect("session");
    assert_eq!(record.blob_version, 0);
    fleet.stop().await;
}

/// A filesystem store whose deletes fail while `failing` is set.
#[derive(Debug)]
struct FlakyStore {
    inner: FsBlobStore,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl BlobStore for FlakyStore {
    async fn load(
        &self,
        session: &wafleet_blob::SessionId,
    ) -> Result<Option<wafleet_blob::StoredBlob>, StoreError> {
        self.inner.load(session).await
    }

    async fn save(
        &self,
        session: &wafleet_blob::SessionId,
        bytes: Vec<u8>,
        condition: &SaveCondition,
    ) -> Result<wafleet_blob::Version, StoreError> {
        self.inner.save(session, bytes, condition).await
    }

    async fn delete(&self, session: &wafleet_blob::SessionId) -> Result<(), StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Task("injected failure".into()));
        }
        self.inner.delete(session).await
    }
}

fn blob_id(session: &str) -> wafleet_blob::SessionId {
    wafleet_blob::SessionId::for_tenant_session("acme", session).expect("blob id")
}

#[tokio::test]
async fn delete_purges_the_blob_and_a_retry_purges_after_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FsBlobStore::new(dir.path()).expect("store");
    let store = Arc::new(FlakyStore {
        inner: fs.clone(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    let Some(fleet) = Fleet::start_with(Some(store.clone())).await else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    create_and_start(&fleet, "del1").await;
    eventually(WAIT, "the lease", || async { worker.epoch_of("del1") }).await;
    for session in ["del1", "keep"] {
        fs.save(
            &blob_id(session),
            b"sealed".to_vec(),
            &SaveCondition::CreateOnly,
        )
        .await
        .expect("save");
    }
    assert!(fs.blob_path(&blob_id("del1")).exists());

    let deleted = fleet
        .command("del1", CommandVerb::Delete, r#"{"commandId": "d1"}"#)
        .await;
    assert_eq!(session_of(&deleted).status, SessionStatus::Stopped as i32);
    assert!(!fs.blob_path(&blob_id("del1")).exists(), "blob purged");
    assert!(
        fs.blob_path(&blob_id("keep")).exists(),
        "another session's blob kept"
    );
    assert_eq!(
        worker.epoch_of("del1"),
        None,
        "the holder was revoked first"
    );

    // A purge that fails: INTERNAL, saying so; the row is gone, the blob stays.
    create_and_start(&fleet, "del2").await;
    fs.save(
        &blob_id("del2"),
        b"sealed".to_vec(),
        &SaveCondition::CreateOnly,
    )
    .await
    .expect("save");
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = fleet
        .command("del2", CommandVerb::Delete, r#"{"commandId": "d2"}"#)
        .await;
    assert_eq!(error_code(&failed), Some(ErrorCode::Internal));
    let message = failed
        .error()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(message.contains("not purged"), "{message}");
    let address = SessionAddress::new("acme", "del2").expect("address");
    assert!(fleet.registry.session(&address).await.is_err());
    assert!(fs.blob_path(&blob_id("del2")).exists());
    // The backend retries with the same id: the row is gone, the purge runs again.
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let retried = fleet
        .command("del2", CommandVerb::Delete, r#"{"commandId": "d2"}"#)
        .await;
    assert!(!retried.replayed);
    assert_eq!(error_code(&retried), Some(ErrorCode::UnknownSession));
    assert!(!fs.blob_path(&blob_id("del2")).exists(), "retry purged");
    fleet.stop().await;
}

fn dead_after() -> Duration {
    HEARTBEAT * 3
}

fn heard_window() -> Duration {
    dead_after() + HEARTBEAT
}

/// Before any coordinator runs: `session` should run and is leased to `ghost`, a worker
/// silent for longer than the dead-after window.
async fn leased_to_a_silent_worker(registry: &Registry, session: &str) -> u64 {
    let ghost = WorkerId::new("ghost").expect("worker");
    registry
        .record_heartbeat(&ghost, 10, false, "t")
        .await
        .expect("heartbeat");
    let address = SessionAddress::new("acme", session).expect("address");
    registry
        .create_session(&address, &BTreeMap::new())
        .await
        .expect("create");
    registry
        .set_desired(&address, true, v1::ReasonCode::Requested)
        .await
        .expect("start");
    let lease = registry
        .grant_lease(&address, &ghost, Duration::from_secs(10))
        .await
        .expect("grant");
    tokio::time::sleep(dead_after() + HEARTBEAT).await;
    lease.epoch
}

/// Heard window, new leader: a coordinator that has just become leader has not heard the
/// fleet yet, so it leaves a silent worker's lease alone for a full dead-after window
/// plus an interval, then moves it.
#[tokio::test]
async fn a_new_leader_ends_silent_leases_only_after_a_heard_window() {
    let Some(fleet) = Fleet::start_full(
        None,
        None,
        |_| {},
        |registry, _| async move {
            leased_to_a_silent_worker(&registry, "quiet").await;
        },
    )
    .await
    else {
        return;
    };
    let started = tokio::time::Instant::now();
    let worker = TestWorker::start(&fleet.nats, "worker-1", 10).await;
    // Without the window the first tick (at once) would end it.
    while started.elapsed() < heard_window() * 3 / 4 {
        assert_eq!(
            holder(&fleet, "quiet").await.map(|(w, _)| w).as_deref(),
            Some("ghost"),
            "ended {:?} after the coordinator started",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let epoch = eventually(WAIT, "the session to move to worker-1", || async {
        worker.epoch_of("quiet")
    })
    .await;
    assert!(started.elapsed() >= heard_window() * 3 / 4);
    assert_eq!(
        holder(&fleet, "quiet").await,
        Some(("worker-1".to_string(), epoch))
    );
    fleet.stop().await;
}

/// Heard window, NATS reconnect: NATS stops for longer than the dead-after window. While
/// it is down the leader makes no grant pass (no churn of epochs); after it returns the
/// leader waits a full window before ending anything, so a worker that comes back a
/// little later than the coordinator keeps its lease at the same epoch.
#[tokio::test]
async fn a_nats_outage_moves_nothing_and_grants_nothing_while_down() {
    let Some(mut fleet) = Fleet::start().await else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    create_and_start(&fleet, "kept").await;
    let epoch = eventually(WAIT, "the lease", || async { worker.epoch_of("kept") }).await;
    // Heard for a while (so the window after the reconnect is what matters).
    tokio::time::sleep(heard_window() * 2).await;

    fleet.nats.stop().await;
    worker.pause_heartbeats(true);
    // A session to grant appears while NATS is down (written to the registry directly).
    let waiting = SessionAddress::new("acme", "waiting").expect("address");
    fleet
        .registry
        .create_session(&waiting, &BTreeMap::new())
        .await
        .expect("create");
    fleet
        .registry
        .set_desired(&waiting, true, v1::ReasonCode::Requested)
        .await
        .expect("start");
    let down = tokio::time::Instant::now();
    while down.elapsed() < dead_after() * 2 {
        let record = fleet.registry.session(&waiting).await.expect("session");
        assert_eq!(record.epoch, 0, "granted while NATS was down");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    fleet.nats.restart().await;
    let back = tokio::time::Instant::now();
    // The worker comes back half a window after the server (its reconnect, its next
    // heartbeat); the coordinator, reconnected at once, must not have ended its lease.
    tokio::time::sleep(heard_window() / 2).await;
    worker.pause_heartbeats(false);
    while back.elapsed() < heard_window() * 3 {
        assert_eq!(
            holder(&fleet, "kept").await,
            Some(("worker-0".to_string(), epoch)),
            "the lease changed {:?} after NATS returned",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(worker.epoch_of("kept"), Some(epoch));
    // And the waiting session is granted once NATS is back.
    let granted = eventually(WAIT, "the waiting session's grant", || async {
        worker.epoch_of("waiting")
    })
    .await;
    assert_eq!(granted, 1, "one grant, no churn");
    fleet.stop().await;
}

/// Reconciliation by heartbeat + sticky re-grant: a lease its holder's heartbeats stop
/// listing (its socket closed on its own) is released and granted again at once, to the
/// same worker (new epoch), though another worker is less loaded; the others stay.
#[tokio::test]
async fn a_lease_the_holders_heartbeats_omit_comes_back_on_the_same_worker() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let first = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    for s in ["o1", "o2"] {
        create_and_start(&fleet, s).await;
    }
    let mut epochs = BTreeMap::new();
    for s in ["o1", "o2"] {
        let epoch = eventually(WAIT, "worker-0 to hold every session", || async {
            first.epoch_of(s)
        })
        .await;
        epochs.insert(s, epoch);
    }
    let second = TestWorker::start(&fleet.nats, "worker-1", 10).await;
    // Past the age under which a grant may not be in a heartbeat yet.
    tokio::time::sleep(HEARTBEAT * 2 + Duration::from_secs(2)).await;
    first.forget("o1");
    let forgotten = tokio::time::Instant::now();
    let epoch = eventually(WAIT, "o1 granted again to worker-0", || async {
        first.epoch_of("o1")
    })
    .await;
    assert!(
        forgotten.elapsed() < Duration::from_secs(3),
        "reconciled after {:?} (the lease TTL is 10 s)",
        forgotten.elapsed()
    );
    assert_eq!(epoch, epochs["o1"] + 1);
    assert_eq!(
        holder(&fleet, "o1").await,
        Some(("worker-0".to_string(), epoch))
    );
    assert_eq!(second.epoch_of("o1"), None, "sticky: not the idle worker");
    assert_eq!(
        holder(&fleet, "o2").await,
        Some(("worker-0".to_string(), epochs["o2"]))
    );
    fleet.stop().await;
}

/// Grant backoff: a session whose holder hands it back because the blob store cannot be
/// reached is granted again after 1 s, then 2 s, … instead of on every tick.
#[tokio::test]
async fn blob_store_unavailable_releases_back_grants_off() {
    let Some(fleet) = Fleet::start().await else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    *worker.release_on_grant.lock().expect("release") = Some(v1::ReasonCode::BlobStoreUnavailable);
    create_and_start(&fleet, "store").await;
    let first = eventually(WAIT, "the first grant", || async {
        worker.grants.lock().expect("grants").first().map(|g| g.0)
    })
    .await;
    tokio::time::sleep_until(first + Duration::from_millis(3600)).await;
    let grants: Vec<tokio::time::Instant> = worker
        .grants
        .lock()
        .expect("grants")
        .iter()
        .map(|g| g.0)
        .collect();
    // 0, ~1, ~3 s: three grants in 3.6 s (on every 200 ms tick it would be ~18).
    assert!(
        (2..=3).contains(&grants.len()),
        "{} grants in 3.6 s",
        grants.len()
    );
    for pair in grants.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(950),
            "grants {:?} apart",
            pair[1] - pair[0]
        );
    }
    // A routine release afterwards is not backed off further than the pending pause.
    *worker.release_on_grant.lock().expect("release") = None;
    eventually(WAIT, "the session held", || async {
        worker.epoch_of("store")
    })
    .await;
    fleet.stop().await;
}

/// PostgreSQL outage on a private server: the leader keeps leading degraded for the
/// grace: heartbeats are acknowledged from memory (never past the grace), commands get
/// UNAVAILABLE; when the database returns everything works again and no lease moved. A
/// longer outage ends the acknowledgements at the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_keeps_sessions_and_answers_unavailable() {
    let Some(pg) = common::PrivatePg::start() else {
        return;
    };
    let pg = Arc::new(pg);
    let grace = Duration::from_secs(3);
    let Some(fleet) = Fleet::start_full(
        None,
        Some(pg.clone()),
        |c| c.pg_grace = grace,
        |_, _| async {},
    )
    .await
    else {
        return;
    };
    let worker = TestWorker::start(&fleet.nats, "worker-0", 10).await;
    create_and_start(&fleet, "pg1").await;
    let epoch = eventually(WAIT, "the lease", || async { worker.epoch_of("pg1") }).await;
    let listed = |ack: &internal::HeartbeatAck| ack.renewed.iter().any(|l| l.session == "pg1");
    let begun = tokio::time::Instant::now();
    eventually(WAIT, "an acknowledgement naming the lease", || async {
        worker
            .acks_since(begun)
            .iter()
            .any(|(_, ack)| listed(ack))
            .then_some(())
    })
    .await;

    // A short outage, within the grace.
    tokio::task::block_in_place(|| pg.stop());
    let down = tokio::time::Instant::now();
    let address = SessionAddress::new("acme", "pg1").expect("address");
    assert!(
        matches!(
            fleet.registry.session(&address).await,
            Err(wafleet_auth_coordinator::RegistryError::Unavailable(_))
        ),
        "a registry call while the database is down is Unavailable"
    );
    let reply = fleet
        .command(
            "pg2",
            CommandVerb::Create,
            r#"{"commandId": "create-pg2-down"}"#,
        )
        .await;
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::Unavailable),
        "{reply:?}"
    );
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let acks = worker.acks_since(down + Duration::from_millis(300));
    assert!(
        acks.len() >= 4,
        "acknowledged from memory: {} acks",
        acks.len()
    );
    for (sent, ack) in &acks {
        assert!(listed(ack), "{ack:?}");
        let trusted_until = *sent + Duration::from_millis(ack.valid_for_ms);
        assert!(
            trusted_until <= down + grace,
            "trusted {:?} past the grace",
            trusted_until - (down + grace)
        );
    }
    tokio::task::block_in_place(|| pg.restart());
    let reply = eventually(WAIT, "commands to work again", || async {
        let reply = fleet
            .command("pg2", CommandVerb::Create, r#"{"commandId": "create-pg2"}"#)
            .await;
        (error_code(&reply) != Some(ErrorCode::Unavailable)).then_some(reply)
    })
    .await;
    assert_eq!(session_of(&reply).status, SessionStatus::Stopped as i32);
    assert_eq!(
        holder(&fleet, "pg1").await,
        Some(("worker-0".to_string(), epoch))
    );

    // A long outage: acknowledgements end with the grace.
    tokio::time::sleep(heard_window() * 2).await;
    tokio::task::block_in_place(|| pg.stop());
    let down = tokio::time::Instant::now();
    tokio::time::sleep(grace + Duration::from_secs(2)).await;
    let acks = worker.acks_since(down);
    assert!(!acks.is_empty());
    for (sent, ack) in &acks {
        let trusted_until = *sent + Duration::from_millis(ack.valid_for_ms);
        assert!(
            trusted_until <= down + grace,
            "trusted {:?} past the grace",
            trusted_until - (down + grace)
        );
    }
    assert!(
        worker
            .acks_since(down + grace + Duration::from_millis(200))
            .is_empty(),
        "acknowledged after the grace"
    );
    tokio::task::block_in_place(|| pg.restart());
    eventually(WAIT, "acknowledgements again", || async {
        let acks = worker.acks_since(tokio::time::Instant::now() - HEARTBEAT * 2);
        acks.iter().any(|(_, ack)| listed(ack)).then_some(())
    })
    .await;
    tokio::time::sleep(heard_window() * 2).await;
    assert_eq!(
        holder(&fleet, "pg1").await,
        Some(("worker-0".to_string(), epoch)),
        "no lease moved"
    );
    fleet.stop().await;
}
