//! The worker: takes lease grants from the coordinator, runs one session task per lease,
//! heartbeats, and drains on shutdown.
//!
//! Messages arrive on `wafleet.v1._sys.coord.<worker>.*` and are handled one at a time;
//! anything that waits on a session (a revoke, a forwarded command) is answered by a task
//! of its own, so one slow session never holds up the others.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use wafleet_bus_schema::codec::ContentType;
use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::nats::content_type_of;
use wafleet_bus_schema::v1::{self, ErrorCode, ReasonCode};
use wafleet_bus_schema::{decode_sys, subject, SessionAddress, SysMessage, WorkerId};

use super::bus::FleetBus;
use super::lease::{HeldLease, LeaseClock};
use super::metrics::{self as m, Health};
use super::session::{self, Ended, SessionPacing, SessionSpec, ToSession};
use super::store::Vault;
use crate::driver::DriverConfig;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name in the fleet.
    pub worker_id: WorkerId,
    /// How many sessions it holds at most.
    pub capacity: u32,
    /// How often it heartbeats (the coordinator's interval).
    pub heartbeat_interval: Duration,
    /// How long it waits for the coordinator's answers.
    pub request_timeout: Duration,
    /// How long a shutdown may take to close and release every session.
    pub drain_timeout: Duration,
    /// The sessions' pacing.
    pub pacing: SessionPacing,
    /// The driver settings for every session (server, root key, timing).
    pub driver: DriverConfig,
    /// Replicas of the event stream when this worker creates it (an existing stream is
    /// left as it is).
    pub stream_replicas: usize,
    /// How session events are encoded: protobuf (the default) or proto3 JSON, for
    /// backends that read JSON without the .proto files. The `Content-Type` header says
    /// which; the `Nats-Msg-Id` is the same either way.
    pub event_encoding: ContentType,
}

impl WorkerConfig {
    /// Defaults for `worker_id`: 100 sessions, 5 s heartbeats, renewals every 10 s.
    pub fn new(worker_id: WorkerId) -> WorkerConfig {
        WorkerConfig {
            worker_id,
            capacity: 100,
            heartbeat_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
            pacing: SessionPacing {
                renew_every: Duration::from_secs(10),
                publish_attempts: 10,
                blob_wait: Duration::from_secs(30),
                send_rate: super::send::SendRate::default(),
            },
            driver: DriverConfig::default(),
            stream_replicas: 1,
            event_encoding: ContentType::Protobuf,
        }
    }
}

/// The worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Subscribing to the worker's subjects failed.
    #[error("nats subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The event stream could not be created or found.
    #[error("event stream: {0}")]
    Stream(String),
}

/// How many times the worker asks for the event stream at start before it gives up (about
/// a minute while NATS does not answer).
const STREAM_ATTEMPTS: u32 = 20;

struct Running {
    epoch: u64,
    clock: LeaseClock,
    inbox: mpsc::Sender<ToSession>,
    task: JoinHandle<()>,
}

/// A session worker.
pub struct Worker {
    config: WorkerConfig,
    bus: FleetBus,
    vault: Arc<Vault>,
    health: Arc<Health>,
    sessions: HashMap<SessionAddress, Running>,
    ended_tx: mpsc::UnboundedSender<Ended>,
    ended_rx: mpsc::UnboundedReceiver<Ended>,
    draining: bool,
}

fn lease_ok(grant: internal::LeaseGrant) -> internal::LeaseReply {
    internal::LeaseReply {
        outcome: Some(internal::lease_reply::Outcome::Lease(grant)),
    }
}

fn lease_err(code: ErrorCode, message: impl Into<String>) -> internal::LeaseReply {
    internal::LeaseReply {
        outcome: Some(internal::lease_reply::Outcome::Error(v1::CommandError {
            retry_after: None,
            code: code as i32,
            message: message.into(),
        })),
    }
}

fn command_id(command: &internal::forwarded_command::Command) -> &str {
    use internal::forwarded_command::Command as F;
    match command {
        F::Stop(c) => &c.command_id,
        F::Logout(c) => &c.command_id,
        F::RequestPairingCode(c) => &c.command_id,
    }
}

impl Worker {
    /// A worker on `client` keeping blobs in `vault`.
    pub fn new(
        config: WorkerConfig,
        client: async_nats::Client,
        vault: Arc<Vault>,
        health: Arc<Health>,
    ) -> Worker {
        let bus = FleetBus::new(client, config.worker_id.clone(), config.request_timeout)
            .with_event_encoding(config.event_encoding);
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Worker {
            config,
            bus,
            vault,
            health,
            sessions: HashMap::new(),
            ended_tx,
            ended_rx,
            draining: false,
        }
    }

    /// The leases this worker holds, as heartbeats and the shutdown announcement list
    /// them: every lease whose session task has not ended. A task ends only after its
    /// socket is closed (and its events flushed and the lease released), so a heartbeat
    /// lists a lease for as long as its socket may be open; the coordinator relies on that
    /// ("the holder is alive and its heartbeat omits epoch E => it holds no socket at E").
    /// The one lease dropped from the list earlier is an epoch superseded by a newer grant
    /// of the same session to this worker: the newer epoch is listed instead, and its task
    /// opens no socket before the older one has closed.
    fn held(&self) -> Vec<internal::HeldLease> {
        self.sessions
            .iter()
            .map(|(address, running)| {
                HeldLease {
                    address: address.clone(),
                    epoch: running.epoch,
                }
                .to_bus()
            })
            .collect()
    }

    /// Sends a heartbeat without holding up the loop; its acknowledgement extends the
    /// local deadline of every lease it renewed (see [`LeaseClock::extend_to`]). No answer
    /// extends nothing: the leases then lapse here when the coordinator may move them.
    /// It lists the same leases as [`Worker::held`].
    fn heartbeat(&self) {
        tracing::trace!(leases = self.sessions.len(), "heartbeat");
        let clocks: HashMap<HeldLease, LeaseClock> = self
            .sessions
            .iter()
            .map(|(address, running)| {
                let held = HeldLease {
                    address: address.clone(),
                    epoch: running.epoch,
                };
                (held, running.clock.clone())
            })
            .collect();
        let held = clocks.keys().map(HeldLease::to_bus).collect();
        let bus = self.bus.clone();
        let capacity = self.config.capacity;
        // A late acknowledgement still counts: its validity runs from the send.
        let patience = self.config.request_timeout;
        tokio::spawn(async move {
            let sent = Instant::now();
            let ack =
                match tokio::time::timeout(patience, bus.heartbeat(capacity, held, false)).await {
                    Ok(Ok(ack)) => ack,
                    Ok(Err(e)) => return warn!(error = %e, "heartbeat not acknowledged"),
                    Err(_) => return warn!("heartbeat not acknowledged in time"),
                };
            let trusted_until = sent + Duration::from_millis(ack.valid_for_ms);
            for renewed in &ack.renewed {
                let Ok(address) = SessionAddress::new(&renewed.tenant, &renewed.session) else {
                    continue;
                };
                let key = HeldLease {
                    address,
                    epoch: renewed.epoch,
                };
                if let Some(clock) = clocks.get(&key) {
                    clock.extend_to(trusted_until);
                }
            }
        });
    }

    fn forget(&mut self, ended: Ended) {
        if let Some(running) = self.sessions.get(&ended.address) {
            if running.epoch == ended.epoch {
                self.sessions.remove(&ended.address);
            }
        }
        metrics::gauge!(m::LEASES_HELD).set(self.sessions.len() as f64);
    }

    /// Runs until `shutdown` turns true, then drains: closes every session, releases its
    /// lease for another worker, announces the shutdown and returns.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let (ready, _) = watch::channel(false);
        self.run_with_ready(shutdown, ready).await
    }

    /// [`Worker::run`], setting `ready` once the worker takes leases.
    pub async fn run_with_ready(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        ready: watch::Sender<bool>,
    ) -> Result<(), WorkerError> {
        let mut inbox = self
            .bus
            .client()
            .subscribe(subject::to_worker(&self.config.worker_id))
            .await?;
        // The client connects in the background (NATS may not be up yet): wait for the
        // stream until it answers or the worker is told to stop.
        let mut tries = 0u32;
        while let Err(e) = self
            .bus
            .ensure_event_stream(self.config.stream_replicas)
            .await
        {
            tries += 1;
            if tries >= STREAM_ATTEMPTS {
                return Err(WorkerError::Stream(e));
            }
            warn!(error = %e, tries, "the event stream is not reachable yet; trying again");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.health.ready.store(true, Ordering::SeqCst);
        info!(worker = %self.config.worker_id, capacity = self.config.capacity, "worker ready");
        let _ = ready.send(true);
        loop {
            tokio::select! {
                message = inbox.next() => match message {
                    Some(message) => self.on_message(message).await,
                    None => {
                        warn!("the NATS subscription ended; draining");
                        break;
                    }
                },
                Some(ended) = self.ended_rx.recv() => self.forget(ended),
                _ = heartbeat.tick() => self.heartbeat(),
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        self.drain(&mut inbox).await;
        Ok(())
    }

    async fn drain(&mut self, inbox: &mut async_nats::Subscriber) {
        self.draining = true;
        self.health.ready.store(false, Ordering::SeqCst);
        info!(
            sessions = self.sessions.len(),
            "draining: closing sessions and releasing their leases"
        );
        for running in self.sessions.values() {
            let _ = running.inbox.send(ToSession::Drain).await;
        }
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        while !self.sessions.is_empty() {
            tokio::select! {
                Some(message) = inbox.next() => self.on_message(message).await,
                Some(ended) = self.ended_rx.recv() => self.forget(ended),
                // Still alive: the coordinator must not move sessions before they closed here.
                _ = heartbeat.tick() => self.heartbeat(),
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(left = self.sessions.len(), "drain timeout: stopping the remaining sessions");
                    break;
                }
            }
        }
        let left = self.held();
        for (_, running) in self.sessions.drain() {
            running.task.abort();
        }
        if let Err(e) = self.bus.announce_shutdown(left, SystemTime::now()).await {
            warn!(error = %e, "shutdown announcement not sent");
        }
        metrics::gauge!(m::LEASES_HELD).set(0.0);
        info!("drained");
    }

    async fn on_message(&mut self, message: async_nats::Message) {
        let decoded = decode_sys(
            message.subject.as_str(),
            &message.payload,
            content_type_of(message.headers.as_ref()),
        );
        let sys = match decoded {
            Ok((_, sys)) => sys,
            Err(e) => {
                warn!(subject = %message.subject, error = %e, "malformed coordinator message");
                let reply = lease_err(e.error_code(), e.to_string());
                self.bus.answer(message.reply.as_ref(), &reply).await;
                return;
            }
        };
        match sys {
            SysMessage::LeaseGrant(grant) => {
                let reply = self.on_grant(grant).await;
                self.bus.answer(message.reply.as_ref(), &reply).await;
            }
            SysMessage::LeaseRevoke(revoke) => self.on_revoke(revoke, message.reply),
            SysMessage::Command(command) => self.on_command(command, message.reply),
            other => {
                warn!(subject = %message.subject, kind = ?std::mem::discriminant(&other), "a worker-bound subject carried a worker's message");
                let reply = lease_err(ErrorCode::InvalidSubject, "not a coordinator message");
                self.bus.answer(message.reply.as_ref(), &reply).await;
            }
        }
    }

    async fn on_grant(&mut self, grant: internal::LeaseGrant) -> internal::LeaseReply {
        let address = match SessionAddress::new(&grant.tenant, &grant.session) {
            Ok(address) => address,
            Err(e) => return lease_err(ErrorCode::MalformedCommand, e.to_string()),
        };
        if grant.worker_id != self.config.worker_id.as_str() {
            return lease_err(ErrorCode::NotLeased, "the grant names another worker");
        }
        if self.draining {
            metrics::counter!(m::GRANTS_REFUSED, "reason" => "draining").increment(1);
            return lease_err(ErrorCode::Unavailable, "the worker is draining");
        }
        if let Some(running) = self.sessions.get(&address) {
            if grant.epoch == running.epoch {
                // A repeated grant: already running.
                return lease_ok(grant);
            }
            if grant.epoch < running.epoch {
                return lease_err(
                    ErrorCode::StaleEpoch,
                    format!("epoch {} runs here", running.epoch),
                );
            }
        } else if self.sessions.len() >= self.config.capacity as usize {
            metrics::counter!(m::GRANTS_REFUSED, "reason" => "full").increment(1);
            return lease_err(ErrorCode::Unavailable, "the worker is full");
        }
        // The older lease ended at the coordinator: tell its task, which closes its socket;
        // the new task waits for it before it connects, so there is never a second socket
        // (and this loop, which heartbeats, waits for nobody).
        let previous = match self.sessions.remove(&address) {
            Some(old) => {
                let inbox = old.inbox;
                tokio::spawn(async move {
                    let _ = inbox.send(ToSession::Superseded).await;
                });
                Some(old.task)
            }
            None => None,
        };
        let (inbox, rx) = mpsc::channel(16);
        let clock = LeaseClock::from_grant(&grant);
        let spec = SessionSpec {
            address: address.clone(),
            grant: grant.clone(),
            clock: clock.clone(),
            previous,
            bus: self.bus.clone(),
            vault: Arc::clone(&self.vault),
            driver: self.config.driver.clone(),
            pacing: self.config.pacing.clone(),
        };
        let task = tokio::spawn(session::run(spec, rx, self.ended_tx.clone()));
        self.sessions.insert(
            address,
            Running {
                epoch: grant.epoch,
                clock,
                inbox,
                task,
            },
        );
        metrics::gauge!(m::LEASES_HELD).set(self.sessions.len() as f64);
        lease_ok(grant)
    }

    fn on_revoke(&mut self, revoke: internal::LeaseRevoke, reply: Option<async_nats::Subject>) {
        let bus = self.bus.clone();
        let target = SessionAddress::new(&revoke.tenant, &revoke.session)
            .ok()
            .and_then(|address| {
                self.sessions
                    .get(&address)
                    .filter(|r| r.epoch == revoke.epoch)
                    .map(|r| r.inbox.clone())
            });
        let Some(session) = target else {
            debug!(tenant = %revoke.tenant, session = %revoke.session, epoch = revoke.epoch, "revoke for a lease not held here");
            tokio::spawn(async move {
                let reply_msg = lease_err(ErrorCode::NotLeased, "not held at that epoch");
                bus.answer(reply.as_ref(), &reply_msg).await;
            });
            return;
        };
        let worker = self.config.worker_id.as_str().to_string();
        tokio::spawn(async move {
            let (done, closed) = oneshot::channel();
            let reason = ReasonCode::try_from(revoke.reason).unwrap_or(ReasonCode::LeaseLost);
            let sent = session.send(ToSession::Revoke { reason, done }).await;
            if sent.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), closed).await;
            }
            let ended = internal::LeaseGrant {
                tenant: revoke.tenant,
                session: revoke.session,
                epoch: revoke.epoch,
                worker_id: worker,
                expires_at: None,
            };
            bus.answer(reply.as_ref(), &lease_ok(ended)).await;
        });
    }

    fn on_command(
        &mut self,
        forwarded: internal::ForwardedCommand,
        reply: Option<async_nats::Subject>,
    ) {
        let bus = self.bus.clone();
        let Some(command) = forwarded.command else {
            // decode_sys refuses a command without a body; nothing to answer for.
            return;
        };
        let id = command_id(&command).to_string();
        let target = SessionAddress::new(&forwarded.tenant, &forwarded.session)
            .ok()
            .and_then(|address| {
                self.sessions
                    .get(&address)
                    .filter(|r| r.epoch == forwarded.epoch)
                    .map(|r| r.inbox.clone())
            });
        tokio::spawn(async move {
            let answer = match target {
                None => v1::CommandReply::with_error(
                    id,
                    ErrorCode::NotLeased,
                    format!(
                        "this worker does not hold the session at epoch {}",
                        forwarded.epoch
                    ),
                ),
                Some(session) => {
                    let (tx, rx) = oneshot::channel();
                    match session
                        .send(ToSession::Command { command, reply: tx })
                        .await
                    {
                        Ok(()) => match rx.await {
                            Ok(answer) => answer,
                            Err(_) => v1::CommandReply::with_error(
                                id,
                                ErrorCode::Unavailable,
                                "the session ended before answering",
                            ),
                        },
                        Err(_) => v1::CommandReply::with_error(
                            id,
                            ErrorCode::NotLeased,
                            "the session has ended",
                        ),
                    }
                }
            };
            bus.answer(reply.as_ref(), &answer).await;
        });
    }
}
