//! The coordinator's NATS side. While it leads, a coordinator subscribes to every command
//! (queue group `wafleet-coordinator`) and to every worker's internal subjects, and every
//! heartbeat interval it:
//!
//! 1. ends the leases of workers that missed `missed_heartbeats` heartbeats, and leases
//!    that ran out;
//! 2. grants the sessions of draining workers to other workers (new epoch) and revokes
//!    them on the draining worker;
//! 3. grants every session that should run and has no lease to the live, non-draining
//!    worker with the fewest sessions relative to its capacity.
//!
//! A grant is written to the registry first (epoch + 1) and then offered to the worker
//! (`lease_grant` request). A worker that refuses or does not answer gets its grant
//! released, and the session is offered again on the next tick with a higher epoch.
//!
//! Commands for one session are handled one at a time, in arrival order, so a repeated
//! command waits for the first one's outcome; commands for different sessions run side by
//! side. Workers' messages are read by a task of their own and handled in two loops
//! (heartbeats; renewals, releases and blob commits), so neither a command waiting on a
//! worker nor a long grant pass holds up a heartbeat, a renewal or a blob commit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Message, Subscriber};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use wafleet_bus_schema::codec::{decode, BusMessage};
use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::nats::{
    answer_request, content_type_of, decode_command_message, decode_event_message,
};
use wafleet_bus_schema::subject::{
    ALL_COMMANDS, ALL_EVENTS, ALL_FROM_WORKERS, COORDINATOR_QUEUE_GROUP,
};
use wafleet_bus_schema::v1::{self, ErrorCode, ReasonCode, SessionStatus};
use wafleet_bus_schema::{
    decode_reply, decode_sys, encode, Command, CommandBody, CommandSubject, CommandVerb,
    ContentType, SessionAddress, SysKind, SysMessage, SysSubject, WorkerId, CONTENT_TYPE_HEADER,
};

use wafleet_blob::BlobStore;

use crate::leadership::{LeaderState, Leadership, Role};
use crate::registry::{Lease, Registry, RegistryError, StoredReply};

/// How the coordinator paces the fleet.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// How often workers heartbeat, and how often the leader checks the fleet.
    pub heartbeat_interval: Duration,
    /// A worker that misses this many heartbeat intervals is dead.
    pub missed_heartbeats: u32,
    /// How long a lease lasts unless renewed (by `lease_renew` or a heartbeat listing it).
    pub lease_ttl: Duration,
    /// How long to wait for a worker's answer to a grant or a forwarded command.
    pub worker_reply_timeout: Duration,
    /// How long command replies are kept for idempotency (the contract says ≥ 24 h).
    pub reply_retention: Duration,
    /// How many sessions one tick grants or moves at most.
    pub batch: i64,
    /// How long a leader that cannot reach PostgreSQL keeps leading (degraded) after its
    /// last confirmed leadership check.
    pub pg_grace: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            heartbeat_interval: Duration::from_secs(5),
            missed_heartbeats: 3,
            lease_ttl: Duration::from_secs(30),
            worker_reply_timeout: Duration::from_secs(5),
            reply_retention: Duration::from_secs(25 * 3600),
            batch: 256,
            pg_grace: Duration::from_secs(45),
        }
    }
}

impl CoordinatorConfig {
    /// Silence after which a worker counts as dead.
    pub fn dead_after(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats.max(1)
    }

    /// How long the leader must have led and been connected to NATS, without a break,
    /// before it ends silent workers' leases or leases that ran out: a full dead-after
    /// window plus one interval, so every live worker has been heard.
    pub fn heard_window(&self) -> Duration {
        self.dead_after() + self.heartbeat_interval
    }

    /// How old a grant must be before a heartbeat that omits it counts (the worker may
    /// not have accepted it yet when it built that heartbeat): two heartbeat intervals
    /// plus the reply timeout the grant offer waits for.
    pub fn reconcile_after(&self) -> Duration {
        self.heartbeat_interval * 2 + self.worker_reply_timeout
    }

    /// The leadership settings that go with this pacing.
    pub fn leadership(&self) -> crate::leadership::LeadershipConfig {
        crate::leadership::LeadershipConfig {
            retry: self.heartbeat_interval,
            pg_grace: self.pg_grace,
            dead_after: self.dead_after(),
            id: crate::leadership::default_id(),
        }
    }
}

/// The coordinator's NATS connection as its event callback reports it: connected since
/// when, or disconnected. Cheap to clone; feed it with [`NatsLink::on_event`] from the
/// client's `event_callback`.
#[derive(Clone, Debug, Default)]
pub struct NatsLink {
    connected_since: Arc<Mutex<Option<Instant>>>,
}

impl NatsLink {
    /// A link not connected yet.
    pub fn new() -> Self {
        NatsLink::default()
    }

    /// Takes a client event: `Connected` starts a new connected period (so a reconnect
    /// restarts the heard window), `Disconnected` and `Closed` end it.
    pub fn on_event(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                tracing::info!("NATS connected");
                *self.lock() = Some(Instant::now());
            }
            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                tracing::warn!(%event, "NATS connection lost");
                *self.lock() = None;
            }
            _ => {}
        }
    }

    /// Since when the connection has been up without a break; `None` while it is down.
    pub fn connected_since(&self) -> Option<Instant> {
        *self.lock()
    }

    /// Takes the client's state as polled: the fallback for a client without the event
    /// callback, and a check that a missed event cannot leave the link up.
    fn observe(&self, state: async_nats::connection::State) {
        let mut since = self.lock();
        match state {
            async_nats::connection::State::Connected => {
                if since.is_none() {
                    *since = Some(Instant::now());
                }
            }
            _ => *since = None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.connected_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// What the serving tasks share about the current term.
#[derive(Default)]
struct Term {
    /// The leadership state, while leading.
    leader: Option<(tokio::sync::watch::Receiver<LeaderState>, Duration)>,
    /// The term number and when it started (the heard window's leadership half).
    started: Option<(u64, Instant)>,
    /// Per worker: the leases its last heartbeat renewed in the registry (acknowledged
    /// from memory while the registry is unreachable).
    renewed: HashMap<String, HashSet<(String, String, u64)>>,
    /// Leases a heartbeat omitted: (worker, tenant, session, epoch) → first omission.
    omitted: HashMap<(String, String, String, u64), Instant>,
}

/// The coordinator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A NATS subscription could not be made.
    #[error("nats subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// Leadership could not be handed back.
    #[error(transparent)]
    Leadership(#[from] crate::leadership::LeadershipError),
}

/// The coordinator: a registry, a NATS connection, the pacing, and optionally the blob
/// store it purges deleted sessions' blobs from.
#[derive(Clone)]
pub struct Coordinator {
    registry: Registry,
    nats: async_nats::Client,
    config: CoordinatorConfig,
    blobs: Option<Arc<dyn BlobStore>>,
    /// One lock per (tenant, session) with commands in flight.
    command_locks: Arc<std::sync::Mutex<CommandLocks>>,
    /// The NATS connection's state.
    link: NatsLink,
    /// The current term.
    term: Arc<Mutex<Term>>,
    /// Asks the serving loop for a grant pass now (after a reconciliation).
    grant_now: Arc<tokio::sync::Notify>,
    /// Whether a session was leased, as last read for a `send` (see `on_send`).
    send_checks: Arc<Mutex<HashMap<SessionAddress, (Instant, bool)>>>,
}

/// How long a registry read answers `send`s for a session (see `Coordinator::on_send`).
const SEND_CHECK_TTL: Duration = Duration::from_secs(1);
/// Sessions whose send check is kept before stale ones are dropped.
const SEND_CHECKS_KEPT: usize = 100_000;

/// The command id of a `send`, for an answer, if its payload decodes.
fn send_command_id(message: &Message) -> String {
    decode_command_message(message)
        .map(|c| c.command_id().to_owned())
        .unwrap_or_default()
}

type CommandLocks = std::collections::HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

impl Coordinator {
    /// A coordinator on `registry` and `nats`, without a blob store (delete then removes
    /// only the registry row).
    pub fn new(registry: Registry, nats: async_nats::Client, config: CoordinatorConfig) -> Self {
        Coordinator {
            registry,
            nats,
            config,
            blobs: None,
            command_locks: Arc::default(),
            link: NatsLink::new(),
            term: Arc::default(),
            grant_now: Arc::default(),
            send_checks: Arc::default(),
        }
    }

    /// The same coordinator, following `link` (fed by the NATS client's event callback)
    /// for its connection state. Without one, the client's state is polled every tick.
    pub fn with_nats_link(mut self, link: NatsLink) -> Self {
        self.link = link;
        self
    }

    fn term(&self) -> std::sync::MutexGuard<'_, Term> {
        self.term.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leadership state and the grace, while serving as leader.
    fn leader_state(&self) -> Option<(LeaderState, Duration)> {
        self.term()
            .leader
            .as_ref()
            .map(|(state, grace)| (*state.borrow(), *grace))
    }

    /// True while leading without a working database connection.
    fn degraded(&self) -> bool {
        self.leader_state().is_some_and(|(s, _)| s.degraded)
    }

    /// Whether the leader has led and been connected to NATS for the full heard window.
    fn heard_enough(&self) -> bool {
        let Some(connected) = self.link.connected_since() else {
            return false;
        };
        let Some((_, started)) = self.term().started else {
            return false;
        };
        connected.max(started).elapsed() >= self.config.heard_window()
    }

    /// The same coordinator, purging deleted sessions' blobs from `store` (the store the
    /// workers write to).
    pub fn with_blob_store(mut self, store: Arc<dyn BlobStore>) -> Self {
        self.blobs = Some(store);
        self
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves while `leadership` says this coordinator leads, waits while it follows, and
    /// returns when `shutdown` turns true (then hands leadership back).
    pub async fn run(
        &self,
        mut leadership: Leadership,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ServiceError> {
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                _ = leadership.until_leader() => {}
                _ = shutdown.changed() => continue,
            }
            tracing::info!("leading: serving commands and workers");
            let stop = self
                .lead(
                    leadership.watch(),
                    leadership.watch_state(),
                    leadership.pg_grace(),
                    shutdown.clone(),
                )
                .await;
            *self.term() = Term::default();
            if let Err(e) = stop {
                tracing::error!(error = %e, "serving failed; retrying");
                tokio::time::sleep(self.config.heartbeat_interval).await;
            }
        }
        leadership.stop().await?;
        Ok(())
    }

    /// Serves until leadership is lost or `shutdown` turns true.
    async fn lead(
        &self,
        mut role: watch::Receiver<Role>,
        mut state: watch::Receiver<LeaderState>,
        pg_grace: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ServiceError> {
        {
            let now = *state.borrow_and_update();
            let mut term = self.term();
            *term = Term::default();
            term.leader = Some((state.clone(), pg_grace));
            term.started = Some((now.term, Instant::now()));
            tracing::info!(term = now.term, horizon = ?now.horizon,
                heard_window_ms = self.config.heard_window().as_millis() as u64,
                "term started: silent workers' leases end only after the heard window");
        }
        let mut commands = self
            .nats
            .queue_subscribe(ALL_COMMANDS, COORDINATOR_QUEUE_GROUP.to_string())
            .await?;
        let workers = self.nats.subscribe(ALL_FROM_WORKERS).await?;
        let mut events = self.nats.subscribe(ALL_EVENTS).await?;
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Workers' messages are read by a task of their own (a grant pass in this loop can
        // take seconds) and handled in two loops: renewals, releases and blob commits in
        // one, so a long grant pass or a command waiting on a worker never holds up a
        // commit; heartbeats in the other, so hundreds of commits queued while a fleet
        // starts never delay an acknowledgement past the time a worker trusts its leases.
        let (stop_workers, workers_done) = tokio::sync::oneshot::channel::<()>();
        let worker_side = self.spawn_worker_side(workers, workers_done);
        loop {
            tokio::select! {
                Some(message) = commands.next() => self.spawn_command(message),
                Some(message) = events.next() => self.on_event(&message).await,
                _ = tick.tick() => self.tick().await,
                _ = self.grant_now.notified() => self.grant_pass().await,
                changed = state.changed() => {
                    if changed.is_err() {
                        tracing::warn!("leadership ended: stopped serving");
                        break;
                    }
                    let now = *state.borrow_and_update();
                    let mut term = self.term();
                    if term.started.is_some_and(|(n, _)| n != now.term) {
                        tracing::info!(term = now.term, "leadership taken again: a new heard window");
                        term.started = Some((now.term, Instant::now()));
                        term.renewed.clear();
                        term.omitted.clear();
                    }
                }
                changed = role.changed() => {
                    if changed.is_err() || !role.borrow().is_leader() {
                        tracing::warn!("no longer leading: stopped serving");
                        break;
                    }
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        let _ = stop_workers.send(());
        let _ = worker_side.await;
        unsubscribe(commands).await;
        unsubscribe(events).await;
        Ok(())
    }

    /// Reads workers' messages until `stop`, hands heartbeats to one loop and the rest to
    /// another (each handles its messages one at a time, in arrival order), then
    /// unsubscribes and waits for both loops to finish.
    fn spawn_worker_side(
        &self,
        mut workers: Subscriber,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let (worker_tx, worker_loop) = self.spawn_worker_loop();
        let (heartbeat_tx, heartbeat_loop) = self.spawn_worker_loop();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = workers.next() => {
                        let Some(message) = message else { break };
                        let to = if is_heartbeat(message.subject.as_str()) {
                            &heartbeat_tx
                        } else {
                            &worker_tx
                        };
                        if to.send((Instant::now(), message)).is_err() {
                            tracing::error!("a worker message loop ended");
                            break;
                        }
                    }
                    _ = &mut stop => break,
                }
            }
            drop(worker_tx);
            drop(heartbeat_tx);
            let _ = worker_loop.await;
            let _ = heartbeat_loop.await;
            unsubscribe(workers).await;
        })
    }

    /// A task that handles workers' messages one at a time, in arrival order.
    fn spawn_worker_loop(
        &self,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<(Instant, Message)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Message)>();
        let this = self.clone();
        let task = tokio::spawn(async move {
            while let Some((received, message)) = rx.recv().await {
                this.on_worker_message_received(&message, received).await;
            }
        });
        (tx, task)
    }

    /// Handles a command in a task of its own. Commands for one session run one at a time
    /// in arrival order (a repeat waits for the first's outcome); commands for different
    /// sessions run side by side, so one waiting on a slow worker holds up nobody else.
    fn spawn_command(&self, message: Message) {
        let key = CommandSubject::parse(message.subject.as_str())
            .map(|s| {
                (
                    s.address.tenant.as_str().to_string(),
                    s.address.session.as_str().to_string(),
                )
            })
            .unwrap_or_default();
        let lock = {
            let mut locks = self.command_locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let this = self.clone();
        tokio::spawn(async move {
            {
                let _turn = lock.lock().await;
                this.on_command(&message).await;
            }
            let mut locks = this.command_locks.lock().unwrap_or_else(|p| p.into_inner());
            // Ours and the map's: nobody else waits for this session.
            if Arc::strong_count(&lock) <= 2 {
                locks.remove(&key);
            }
        });
    }

    /// One pass over the fleet: expire, drain, grant. Skipped while the database is
    /// unreachable (degraded) or NATS is disconnected (offers would fail and churn);
    /// leases end only once the heard window is full.
    pub async fn tick(&self) {
        self.link.observe(self.nats.connection_state());
        if self.degraded() {
            tracing::debug!("degraded: no pass over the fleet");
            return;
        }
        if self.link.connected_since().is_none() {
            tracing::debug!("NATS disconnected: no pass over the fleet");
            return;
        }
        if self.heard_enough() {
            if let Err(e) = self.expire().await {
                tracing::error!(error = %e, "expiring leases failed");
            }
        }
        self.grant_pass().await;
        if let Err(e) = self
            .registry
            .prune_replies(self.config.reply_retention)
            .await
        {
            tracing::error!(error = %e, "pruning command replies failed");
        }
    }

    /// Moves sessions off draining workers and grants the unleased ones (not while
    /// degraded or disconnected from NATS).
    async fn grant_pass(&self) {
        if self.degraded() || self.link.connected_since().is_none() {
            return;
        }
        if let Err(e) = self.move_from_draining().await {
            tracing::error!(error = %e, "moving sessions off draining workers failed");
        }
        if let Err(e) = self.grant_unleased().await {
            tracing::error!(error = %e, "granting sessions failed");
        }
    }

    async fn expire(&self) -> Result<(), RegistryError> {
        let horizon = self.leader_state().and_then(|(s, _)| s.horizon);
        for lease in self
            .registry
            .expire_leases_after(self.config.dead_after(), horizon)
            .await?
        {
            tracing::info!(session = %lease.address, worker = %lease.worker, epoch = lease.epoch,
                "lease ended: worker dead or lease not renewed");
            self.revoke(&lease, ReasonCode::LeaseLost).await;
        }
        Ok(())
    }

    async fn move_from_draining(&self) -> Result<(), RegistryError> {
        for old in self.registry.leases_on_draining(self.config.batch).await? {
            let granted = match self
                .registry
                .grant_to_least_loaded(
                    &old.address,
                    Some(&old.worker),
                    self.config.lease_ttl,
                    self.config.dead_after(),
                )
                .await
            {
                // Released or moved meanwhile: nothing to move.
                Err(RegistryError::AlreadyLeased { .. }) => continue,
                other => other?,
            };
            let Some(new) = granted else {
                tracing::warn!(session = %old.address, "no worker to take a draining worker's session");
                break;
            };
            tracing::info!(session = %old.address, from = %old.worker, to = %new.worker,
                epoch = new.epoch, "moving session off a draining worker");
            self.revoke(&old, ReasonCode::WorkerDraining).await;
            self.offer(&new).await?;
        }
        Ok(())
    }

    /// Grants the unleased sessions. Until the heard window is full (see
    /// [`Coordinator::heard_enough`]) a session waits for the last worker that held it:
    /// after an outage of NATS or of the coordinator every worker was silent, and the
    /// first one heard must not collect the others' sessions.
    async fn grant_unleased(&self) -> Result<(), RegistryError> {
        let wait_for_last = !self.heard_enough();
        for address in self.registry.unleased_running(self.config.batch).await? {
            if !self.grant(&address).await? && !wait_for_last {
                break;
            }
        }
        Ok(())
    }

    /// Grants the session (to its last worker if live, else the least loaded; only to its
    /// last worker until the heard window is full) and offers it; false when no worker
    /// can take it now.
    async fn grant(&self, address: &SessionAddress) -> Result<bool, RegistryError> {
        let (ttl, dead_after) = (self.config.lease_ttl, self.config.dead_after());
        let granted = if self.heard_enough() {
            self.registry
                .grant_to_least_loaded(address, None, ttl, dead_after)
                .await
        } else {
            self.registry
                .grant_to_last_worker(address, ttl, dead_after)
                .await
        };
        let granted = match granted {
            // A start command and the tick both saw it unleased; the other one granted it.
            Err(RegistryError::AlreadyLeased { .. }) => return Ok(true),
            other => other?,
        };
        match granted {
            Some(lease) => {
                self.offer(&lease).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Sends a grant to its worker; releases it in the registry when the worker refuses or
    /// does not answer, so the next tick grants it again.
    async fn offer(&self, lease: &Lease) -> Result<(), RegistryError> {
        let subject = SysSubject::new(lease.worker.clone(), SysKind::LeaseGrant);
        let answer = self.request(subject.to_string(), &lease.to_grant()).await;
        let refusal = match answer {
            Ok(message) => match decode::<internal::LeaseReply>(
                &message.payload,
                ContentType::from_header(content_type_of(message.headers.as_ref()))
                    .unwrap_or(ContentType::Protobuf),
            ) {
                Ok(internal::LeaseReply {
                    outcome: Some(internal::lease_reply::Outcome::Lease(accepted)),
                }) if accepted.epoch == lease.epoch => None,
                Ok(reply) => Some(format!("refused: {:?}", reply.outcome)),
                Err(e) => Some(format!("unreadable reply: {e}")),
            },
            Err(e) => Some(e),
        };
        match refusal {
            None => {
                tracing::info!(session = %lease.address, worker = %lease.worker, epoch = lease.epoch, "lease granted");
                // Known held from now on: acknowledged from memory if the registry goes
                // away before the worker's next heartbeat is recorded.
                self.term()
                    .renewed
                    .entry(lease.worker.as_str().to_string())
                    .or_default()
                    .insert((
                        lease.address.tenant.as_str().to_string(),
                        lease.address.session.as_str().to_string(),
                        lease.epoch,
                    ));
                Ok(())
            }
            Some(why) => {
                tracing::warn!(session = %lease.address, worker = %lease.worker, epoch = lease.epoch, %why, "lease grant not accepted");
                match self
                    .registry
                    .release_lease(&lease.address, &lease.worker, lease.epoch)
                    .await
                {
                    Ok(_)
                    | Err(RegistryError::Fenced { .. } | RegistryError::UnknownSession(_)) => {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Tells a worker to drop a lease (fire and forget: the registry has moved on, and the
    /// fencing epoch stops a worker that does not hear it).
    async fn revoke(&self, lease: &Lease, reason: ReasonCode) {
        let (subject, revoke) = revoke_message(lease, reason);
        if let Err(e) = self.publish(subject, &revoke).await {
            tracing::warn!(session = %lease.address, error = %e, "lease revoke not sent");
        }
    }

    async fn publish<M: BusMessage>(&self, subject: String, message: &M) -> Result<(), String> {
        let payload = encode(message, ContentType::Protobuf).map_err(|e| e.to_string())?;
        self.nats
            .publish_with_headers(subject, protobuf_headers(), payload.into())
            .await
            .map_err(|e| e.to_string())
    }

    async fn request<M: BusMessage>(
        &self,
        subject: String,
        message: &M,
    ) -> Result<Message, String> {
        let payload = encode(message, ContentType::Protobuf).map_err(|e| e.to_string())?;
        let request = self
            .nats
            .request_with_headers(subject, protobuf_headers(), payload.into());
        match tokio::time::timeout(self.config.worker_reply_timeout, request).await {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".to_string()),
        }
    }

    /// Handles a message from a worker.
    pub async fn on_worker_message(&self, message: &Message) {
        self.on_worker_message_received(message, Instant::now())
            .await
    }

    /// Handles a message from a worker that arrived at `received`.
    async fn on_worker_message_received(&self, message: &Message, received: Instant) {
        let content_type = content_type_of(message.headers.as_ref());
        let decoded = decode_sys(message.subject.as_str(), &message.payload, content_type);
        let (subject, sys) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "malformed worker message");
                let reply = lease_error(e.error_code(), e.to_string());
                self.answer(message, &reply).await;
                return;
            }
        };
        let worker = subject.worker;
        match sys {
            SysMessage::Heartbeat(heartbeat) => {
                self.on_heartbeat(message, &worker, &heartbeat, received)
                    .await
            }
            SysMessage::Shutdown(_)
            | SysMessage::LeaseRenew(_)
            | SysMessage::LeaseRelease(_)
            | SysMessage::BlobCommit(_)
                if self.degraded() =>
            {
                // The registry cannot be reached: nothing can be decided. UNAVAILABLE is
                // not a fencing answer; the worker keeps its lease and tries again.
                let reply = lease_error(
                    ErrorCode::Unavailable,
                    "the registry is unavailable; try again".to_string(),
                );
                self.answer(message, &reply).await;
            }
            SysMessage::Shutdown(_) => {
                tracing::info!(%worker, "worker announced shutdown: draining");
                if let Err(e) = self.registry.mark_draining(&worker).await {
                    tracing::error!(%worker, error = %e, "marking worker draining failed");
                }
                if let Err(e) = self.move_from_draining().await {
                    tracing::error!(error = %e, "moving sessions off draining workers failed");
                }
            }
            SysMessage::LeaseRenew(renew) => {
                let reply = match SessionAddress::new(&renew.tenant, &renew.session) {
                    Ok(address) => lease_reply(
                        self.registry
                            .renew_lease(
                                &address,
                                &worker,
                                renew.epoch,
                                self.config.lease_ttl,
                                self.config.dead_after(),
                            )
                            .await,
                    ),
                    Err(e) => lease_error(ErrorCode::MalformedCommand, e.to_string()),
                };
                self.answer(message, &reply).await;
            }
            SysMessage::LeaseRelease(release) => {
                let reply = match SessionAddress::new(&release.tenant, &release.session) {
                    Ok(address) => {
                        let reason =
                            ReasonCode::try_from(release.reason).unwrap_or(ReasonCode::Unspecified);
                        let released = self
                            .registry
                            .release_lease_as(&address, &worker, release.epoch, reason)
                            .await;
                        match &released {
                            Ok(_) => self.settle_released(&address, release.reason).await,
                            // The lease at this very epoch ended already (reconciled or
                            // expired) and was not granted again: a final reason still
                            // settles the session (settle leaves a leased one alone).
                            Err(RegistryError::Fenced { current, .. })
                                if *current == release.epoch =>
                            {
                                self.settle_released(&address, release.reason).await
                            }
                            Err(_) => {}
                        }
                        if reason == ReasonCode::BlobStoreUnavailable && released.is_ok() {
                            tracing::info!(session = %address, %worker, epoch = release.epoch,
                                "released: blob store unavailable; the next grant is backed off");
                        }
                        lease_reply(released)
                    }
                    Err(e) => lease_error(ErrorCode::MalformedCommand, e.to_string()),
                };
                self.answer(message, &reply).await;
            }
            SysMessage::BlobCommit(commit) => {
                let reply = match SessionAddress::new(&commit.tenant, &commit.session) {
                    Ok(address) => {
                        let committed = self
                            .registry
                            .commit_blob_version_for(
                                &address,
                                &worker,
                                commit.epoch,
                                commit.version,
                            )
                            .await;
                        match &committed {
                            Ok(_) => {
                                tracing::debug!(session = %address, %worker, epoch = commit.epoch,
                                    version = commit.version, "blob version committed")
                            }
                            Err(e) => {
                                tracing::info!(session = %address, %worker, epoch = commit.epoch,
                                    version = commit.version, error = %e, "blob commit refused")
                            }
                        }
                        lease_reply(committed)
                    }
                    Err(e) => lease_error(ErrorCode::MalformedCommand, e.to_string()),
                };
                self.answer(message, &reply).await;
            }
            SysMessage::LeaseGrant(_) | SysMessage::LeaseRevoke(_) | SysMessage::Command(_) => {
                tracing::warn!(subject = %message.subject, "coordinator-bound subject carried a coordinator message");
            }
        }
    }

    /// After a worker released a lease: a session given up for good is settled (not
    /// granted again); any other release (draining, restart, lost connection) leaves it to
    /// be granted to a worker on the next tick.
    async fn settle_released(&self, address: &SessionAddress, reason: i32) {
        let reason = ReasonCode::try_from(reason).unwrap_or(ReasonCode::Unspecified);
        let status = match reason {
            ReasonCode::LoggedOut | ReasonCode::Requested => SessionStatus::Stopped,
            ReasonCode::Replaced
            | ReasonCode::QrExhausted
            | ReasonCode::ClientOutdated
            | ReasonCode::BlobRejected
            | ReasonCode::TemporaryBan
            | ReasonCode::PairingFailed
            | ReasonCode::InternalFailure => SessionStatus::Failed,
            ReasonCode::Unspecified
            | ReasonCode::ConnectionLost
            | ReasonCode::KeepaliveTimeout
            | ReasonCode::RestartRequired
            | ReasonCode::LeaseLost
            | ReasonCode::WorkerDraining
            | ReasonCode::BlobStoreUnavailable => return,
        };
        match self.registry.settle(address, status, reason).await {
            Ok(_) => {
                tracing::info!(session = %address, ?status, ?reason, "session settled after release")
            }
            Err(e) => {
                tracing::error!(session = %address, error = %e, "settling a released session failed")
            }
        }
    }

    /// Handles a worker's session event: the lease holder's status goes into the registry
    /// (events of other epochs are ignored).
    pub async fn on_event(&self, message: &Message) {
        use v1::session_event::Payload;
        if self.degraded() {
            return;
        }
        // Only these kinds change the registry; messages and receipts (most of the
        // traffic) are not even decoded.
        let kind = message.subject.as_str().rsplit('.').next().unwrap_or("");
        if !matches!(kind, "status" | "qr" | "ready") {
            return;
        }
        let event = match decode_event_message(message) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "malformed session event");
                return;
            }
        };
        // decode_event checked the names.
        let (Ok(address), Ok(worker)) = (
            SessionAddress::new(&event.tenant, &event.session),
            WorkerId::new(event.worker_id.as_str()),
        ) else {
            return;
        };
        let (status, reason, jid) = match &event.payload {
            Some(Payload::Status(changed)) => (
                SessionStatus::try_from(changed.status).unwrap_or(SessionStatus::Unspecified),
                ReasonCode::try_from(changed.reason).unwrap_or(ReasonCode::Unspecified),
                None,
            ),
            Some(Payload::Qr(_)) => (SessionStatus::ScanQrCode, ReasonCode::Unspecified, None),
            Some(Payload::Ready(ready)) => (
                SessionStatus::Working,
                ReasonCode::Unspecified,
                Some(ready.jid.as_str()),
            ),
            Some(
                Payload::PairingCode(_)
                | Payload::Disconnected(_)
                | Payload::Message(_)
                | Payload::Receipt(_)
                | Payload::MessageUndecryptable(_)
                | Payload::MessageSent(_),
            )
            | None => return,
        };
        if status == SessionStatus::Unspecified {
            return;
        }
        match self
            .registry
            .record_status(&address, &worker, event.epoch, status, reason, jid)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(session = %address, epoch = event.epoch, "event from a lease not current: ignored")
            }
            Err(e) => {
                tracing::error!(session = %address, error = %e, "recording session status failed")
            }
        }
    }

    /// Records the heartbeat and renews the leases it lists, answers with the renewed ones
    /// and how long the worker may trust them (no answer when nothing was recorded: the
    /// worker then trusts its leases no longer than before), then revokes the listed leases
    /// the worker no longer holds and reconciles the ones it omits.
    ///
    /// While the registry cannot be reached (degraded leadership, or the statement failed
    /// as unavailable) the heartbeat is acknowledged from memory: the leases the worker's
    /// last recorded heartbeat renewed that this one still lists, valid for no longer than
    /// the grace left (see `leadership`).
    async fn on_heartbeat(
        &self,
        message: &Message,
        worker: &WorkerId,
        heartbeat: &internal::WorkerHeartbeat,
        received: Instant,
    ) {
        let held: Vec<(String, String, u64)> = heartbeat
            .leases
            .iter()
            .map(|l| (l.tenant.clone(), l.session.clone(), l.epoch))
            .collect();
        if !self.degraded() {
            match self.record_and_renew(worker, heartbeat, &held).await {
                Ok((renewed, stale)) => {
                    self.term().renewed.insert(
                        worker.as_str().to_string(),
                        renewed.iter().cloned().collect(),
                    );
                    self.acknowledge(message, renewed).await;
                    for (tenant, session, epoch) in stale {
                        let Ok(address) = SessionAddress::new(&tenant, &session) else {
                            continue;
                        };
                        tracing::info!(%worker, session = %address, epoch, "worker runs a fenced lease: revoking");
                        let lease = Lease {
                            address,
                            worker: worker.clone(),
                            epoch,
                            expires_at: std::time::SystemTime::now(),
                        };
                        self.revoke(&lease, ReasonCode::LeaseLost).await;
                    }
                    if let Err(e) = self.reconcile(worker, &held, received).await {
                        tracing::error!(%worker, error = %e, "reconciling a worker's leases failed");
                    }
                    return;
                }
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(%worker, error = %e, "registry unavailable: acknowledging the heartbeat from memory");
                }
                Err(e) => {
                    tracing::error!(%worker, error = %e, "recording heartbeat failed");
                    return;
                }
            }
        }
        let remembered: Vec<(String, String, u64)> = {
            let term = self.term();
            let Some(known) = term.renewed.get(worker.as_str()) else {
                return;
            };
            held.iter()
                .filter(|h| known.contains(*h))
                .cloned()
                .collect()
        };
        self.acknowledge(message, remembered).await;
    }

    async fn record_and_renew(
        &self,
        worker: &WorkerId,
        heartbeat: &internal::WorkerHeartbeat,
        held: &[(String, String, u64)],
    ) -> Result<crate::registry::HeldRenewal, RegistryError> {
        self.registry
            .record_heartbeat(
                worker,
                heartbeat.capacity,
                heartbeat.draining,
                &heartbeat.version,
            )
            .await?;
        self.registry
            .renew_held(worker, held, self.config.lease_ttl)
            .await
    }

    /// Answers a heartbeat: `renewed`, valid for min(lease TTL, dead-after, the grace
    /// left). Both clocks started no earlier than the worker sent the heartbeat. No
    /// answer once the grace is spent.
    async fn acknowledge(&self, message: &Message, renewed: Vec<(String, String, u64)>) {
        let mut valid_for = self.config.lease_ttl.min(self.config.dead_after());
        if let Some((state, grace)) = self.leader_state() {
            let left = state.grace_left(grace);
            if left.is_zero() {
                tracing::warn!("leadership grace spent: heartbeat not acknowledged");
                return;
            }
            valid_for = valid_for.min(left);
        }
        let renewed = renewed
            .into_iter()
            .map(|(tenant, session, epoch)| internal::HeldLease {
                tenant,
                session,
                epoch,
            })
            .collect();
        let ack = internal::HeartbeatAck {
            renewed,
            valid_for_ms: u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX),
        };
        self.answer(message, &ack).await;
    }

    /// Reconciliation by heartbeat: a lease the registry gives `worker`, granted long
    /// enough ago, that two of its heartbeats in a row (at least half an interval apart)
    /// omit is one it holds no socket for (it lists a lease until the socket is closed):
    /// released, epoch kept, and granted again at once, the same worker first.
    async fn reconcile(
        &self,
        worker: &WorkerId,
        held: &[(String, String, u64)],
        received: Instant,
    ) -> Result<(), RegistryError> {
        // A heartbeat that waited in the queue is as old as its arrival.
        let min_age = self.config.reconcile_after() + received.elapsed();
        let unlisted = self.registry.unlisted_leases(worker, held, min_age).await?;
        let due: Vec<Lease> = {
            let mut term = self.term();
            let key = |l: &Lease| {
                (
                    worker.as_str().to_string(),
                    l.address.tenant.as_str().to_string(),
                    l.address.session.as_str().to_string(),
                    l.epoch,
                )
            };
            let now: HashSet<_> = unlisted.iter().map(key).collect();
            term.omitted
                .retain(|k, _| k.0 != worker.as_str() || now.contains(k));
            let settle = self.config.heartbeat_interval / 2;
            unlisted
                .into_iter()
                .filter(|l| {
                    let first = *term.omitted.entry(key(l)).or_insert(received);
                    received.saturating_duration_since(first) >= settle
                })
                .collect()
        };
        let mut released = 0;
        for lease in due {
            match self
                .registry
                .release_lease(&lease.address, &lease.worker, lease.epoch)
                .await
            {
                Ok(_) => {
                    released += 1;
                    tracing::info!(session = %lease.address, %worker, epoch = lease.epoch,
                        "reconciled: the holder's heartbeats omit the lease (no socket); granting it again");
                }
                Err(RegistryError::Fenced { .. } | RegistryError::UnknownSession(_)) => {}
                Err(e) => return Err(e),
            }
            self.term().omitted.remove(&(
                worker.as_str().to_string(),
                lease.address.tenant.as_str().to_string(),
                lease.address.session.as_str().to_string(),
                lease.epoch,
            ));
        }
        if released > 0 {
            self.grant_now.notify_one();
        }
        Ok(())
    }

    async fn answer<M: BusMessage>(&self, request: &Message, reply: &M) {
        if let Err(e) = answer_request(&self.nats, request, reply).await {
            tracing::warn!(error = %e, "reply not sent");
        }
    }

    /// Handles a backend's command and answers it.
    pub async fn on_command(&self, message: &Message) {
        if let Ok(subject) = CommandSubject::parse(message.subject.as_str()) {
            if subject.verb == CommandVerb::Send {
                return self.on_send(message, &subject.address).await;
            }
        }
        let reply = match decode_command_message(message) {
            Ok(command) if self.degraded() => v1::CommandReply::with_error(
                command.command_id(),
                ErrorCode::Unavailable,
                "the session registry is unavailable; try again",
            ),
            Ok(command) => self.execute_once(&command).await,
            Err(e) => {
                tracing::info!(subject = %message.subject, error = %e, "malformed command");
                v1::CommandReply::with_error(String::new(), e.error_code(), e.to_string())
            }
        };
        self.answer(message, &reply).await;
    }

    /// A `send` is the session holder's to answer (it subscribes to the session's send
    /// subject while its socket runs): the coordinator stays silent while the registry says
    /// a worker holds the session, and otherwise answers at once that nobody can send —
    /// `NOT_WORKING` (or `UNKNOWN_SESSION`), so a backend does not wait for its timeout.
    /// The registry's answer is kept for [`SEND_CHECK_TTL`], so a busy session costs at
    /// most one registry read a second, not one per message.
    async fn on_send(&self, message: &Message, address: &SessionAddress) {
        let held = match self.held_for_send(address).await {
            Ok(held) => held,
            Err(e) if matches!(e, RegistryError::UnknownSession(_)) => {
                let reply = v1::CommandReply::with_error(
                    send_command_id(message),
                    ErrorCode::UnknownSession,
                    e.to_string(),
                );
                return self.answer(message, &reply).await;
            }
            Err(e) => {
                tracing::debug!(session = %address, error = %e, "send: registry unreadable; leaving the send to a holder");
                return;
            }
        };
        if held {
            return;
        }
        let reply = v1::CommandReply::with_error(
            send_command_id(message),
            ErrorCode::NotWorking,
            "no worker runs this session now (stopped, or between workers): start it, or retry with the same command_id",
        );
        self.answer(message, &reply).await;
    }

    /// Whether a worker holds `address`'s lease, by the registry, read at most once per
    /// [`SEND_CHECK_TTL`].
    async fn held_for_send(&self, address: &SessionAddress) -> Result<bool, RegistryError> {
        let now = Instant::now();
        if let Some((at, held)) = self.send_checks().get(address) {
            if now.duration_since(*at) < SEND_CHECK_TTL {
                return Ok(*held);
            }
        }
        let record = self.registry.session(address).await?;
        let held = record.worker.is_some();
        let mut checks = self.send_checks();
        if checks.len() >= SEND_CHECKS_KEPT {
            checks.retain(|_, (at, _)| now.duration_since(*at) < SEND_CHECK_TTL);
        }
        checks.insert(address.clone(), (now, held));
        Ok(held)
    }

    fn send_checks(&self) -> std::sync::MutexGuard<'_, HashMap<SessionAddress, (Instant, bool)>> {
        self.send_checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a command once per (tenant, command id): a repeat gets the stored reply.
    pub async fn execute_once(&self, command: &Command) -> v1::CommandReply {
        let tenant = command.address.tenant.as_str();
        let command_id = command.command_id();
        let verb = command.body.verb().as_str().to_string();
        let session = command.address.session.as_str().to_string();
        let payload_hash = match command_hash(command) {
            Ok(hash) => hash,
            Err(e) => return internal_error(command_id, e),
        };
        match self.registry.stored_reply(tenant, command_id).await {
            Ok(Some(stored)) => return replay(command_id, &verb, &session, &payload_hash, &stored),
            Ok(None) => {}
            Err(e) if e.is_unavailable() => return unavailable(command_id, e),
            Err(e) => return internal_error(command_id, e),
        }
        let reply = self.execute(command).await;
        if reply.error().is_some_and(|e| is_transient(e.code)) {
            return reply;
        }
        let encoded = match encode(&reply, ContentType::Protobuf) {
            Ok(encoded) => encoded,
            Err(e) => return internal_error(command_id, e),
        };
        let stored = StoredReply {
            verb: verb.clone(),
            session: session.clone(),
            payload_hash: payload_hash.clone(),
            reply: encoded.clone(),
        };
        match self.registry.store_reply(tenant, command_id, &stored).await {
            Ok(kept) if kept.reply == encoded => reply,
            Ok(kept) => replay(command_id, &verb, &session, &payload_hash, &kept),
            Err(e) => {
                tracing::error!(error = %e, "storing command reply failed");
                reply
            }
        }
    }

    async fn execute(&self, command: &Command) -> v1::CommandReply {
        let id = command.command_id();
        let address = &command.address;
        let result = match &command.body {
            CommandBody::Create(create) => self
                .registry
                .create_session(address, &create.metadata)
                .await
                .map(|record| v1::CommandReply::with_session(id, record.to_info())),
            CommandBody::Start(_) => self.start(address, id).await,
            CommandBody::Stop(_) => self.stop(address, ReasonCode::Requested, id).await,
            CommandBody::Logout(logout) => {
                let forwarded = internal::forwarded_command::Command::Logout(logout.clone());
                match self.forward(address, id, forwarded).await {
                    Ok(reply) if reply.error().is_some() => Ok(reply),
                    Ok(_) => self.stop(address, ReasonCode::LoggedOut, id).await,
                    Err(e) => Err(e),
                }
            }
            CommandBody::Delete(_) => self.delete(address, id).await,
            CommandBody::RequestPairingCode(request) => {
                let forwarded =
                    internal::forwarded_command::Command::RequestPairingCode(request.clone());
                self.forward(address, id, forwarded).await
            }
            // `on_command` hands sends to `on_send` before they get here.
            CommandBody::Send(_) => Ok(v1::CommandReply::with_error(
                id,
                ErrorCode::NotWorking,
                "send is answered by the session's worker",
            )),
        };
        result.unwrap_or_else(|e| registry_error_reply(id, address, e))
    }

    async fn start(
        &self,
        address: &SessionAddress,
        id: &str,
    ) -> Result<v1::CommandReply, RegistryError> {
        let (_, after) = self
            .registry
            .set_desired(address, true, ReasonCode::Requested)
            .await?;
        if after.worker.is_none() && !self.grant(address).await? {
            tracing::info!(session = %address, "started; no worker free yet, granted later");
        }
        let now = self.registry.session(address).await?;
        Ok(v1::CommandReply::with_session(id, now.to_info()))
    }

    async fn stop(
        &self,
        address: &SessionAddress,
        reason: ReasonCode,
        id: &str,
    ) -> Result<v1::CommandReply, RegistryError> {
        let (before, after) = self.registry.set_desired(address, false, reason).await?;
        if let Some(lease) = before.lease() {
            self.revoke(&lease, ReasonCode::Requested).await;
        }
        Ok(v1::CommandReply::with_session(id, after.to_info()))
    }

    /// Delete: the row goes first (so the epoch dies and the holder's blob commits are
    /// refused), then the holder is revoked and given the reply timeout to let go, then the
    /// blob is purged. A failed purge is an `INTERNAL` reply, which is not stored, so the
    /// backend's retry with the same id runs again: the row is gone by then, and the purge
    /// is tried again before the retry gets `UNKNOWN_SESSION`.
    async fn delete(
        &self,
        address: &SessionAddress,
        id: &str,
    ) -> Result<v1::CommandReply, RegistryError> {
        let removed = match self.registry.delete_session(address).await {
            Ok(removed) => removed,
            Err(RegistryError::UnknownSession(gone)) => {
                // Perhaps an earlier delete removed the row and failed to purge.
                if let Err(reply) = self.purge_blob(address, id).await {
                    return Ok(reply);
                }
                return Err(RegistryError::UnknownSession(gone));
            }
            Err(e) => return Err(e),
        };
        if let Some(lease) = removed.lease() {
            self.revoke_and_wait(&lease, ReasonCode::Requested).await;
        }
        if let Err(reply) = self.purge_blob(address, id).await {
            return Ok(reply);
        }
        let mut info = removed.to_info();
        info.status = SessionStatus::Stopped as i32;
        info.worker_id.clear();
        Ok(v1::CommandReply::with_session(id, info))
    }

    /// Removes the session's blob from the blob store, if one is configured. `Err` is the
    /// `INTERNAL` reply to send.
    async fn purge_blob(&self, address: &SessionAddress, id: &str) -> Result<(), v1::CommandReply> {
        let Some(store) = &self.blobs else {
            tracing::info!(session = %address, "no blob store configured: the session's blob (if any) is not purged");
            return Ok(());
        };
        let failed = |why: String| {
            tracing::error!(session = %address, error = %why, "purging the session's blob failed");
            v1::CommandReply::with_error(
                id,
                ErrorCode::Internal,
                format!(
                    "session {} of tenant {} is removed from the registry, but its blob was not purged: {why}; send delete again to purge it",
                    address.session, address.tenant
                ),
            )
        };
        let blob_id = wafleet_blob::SessionId::for_tenant_session(
            address.tenant.as_str(),
            address.session.as_str(),
        )
        .map_err(|e| failed(e.to_string()))?;
        store
            .delete(&blob_id)
            .await
            .map_err(|e| failed(e.to_string()))?;
        tracing::info!(session = %address, "session blob purged");
        Ok(())
    }

    /// Tells a worker to drop a lease and waits (up to the reply timeout) for its answer,
    /// so its last blob write is done before the blob is purged. No answer is logged, not
    /// an error: the session's row is gone, so the worker's commits are refused anyway.
    async fn revoke_and_wait(&self, lease: &Lease, reason: ReasonCode) {
        let (subject, revoke) = revoke_message(lease, reason);
        match self.request(subject, &revoke).await {
            Ok(_) => {
                tracing::debug!(session = %lease.address, worker = %lease.worker, "revoke answered")
            }
            Err(e) => {
                tracing::warn!(session = %lease.address, worker = %lease.worker, error = %e,
                    "revoke not answered; purging anyway")
            }
        }
    }

    /// Forwards a command to the session's lease holder and returns its reply.
    async fn forward(
        &self,
        address: &SessionAddress,
        id: &str,
        command: internal::forwarded_command::Command,
    ) -> Result<v1::CommandReply, RegistryError> {
        let record = self.registry.session(address).await?;
        let Some(lease) = record.lease() else {
            return Ok(v1::CommandReply::with_error(
                id,
                ErrorCode::InvalidState,
                format!("session {address} is not running; start it first"),
            ));
        };
        let forwarded = internal::ForwardedCommand {
            tenant: address.tenant.as_str().to_string(),
            session: address.session.as_str().to_string(),
            epoch: lease.epoch,
            command: Some(command),
        };
        let subject = SysSubject::new(lease.worker.clone(), SysKind::Command);
        let reply = match self.request(subject.to_string(), &forwarded).await {
            Ok(message) => {
                match decode_reply(&message.payload, content_type_of(message.headers.as_ref())) {
                    Ok(mut reply) => {
                        reply.command_id = id.to_string();
                        reply.replayed = false;
                        reply
                    }
                    Err(e) => v1::CommandReply::with_error(
                        id,
                        ErrorCode::Internal,
                        format!("worker {} answered unreadably: {e}", lease.worker),
                    ),
                }
            }
            Err(e) => v1::CommandReply::with_error(
                id,
                ErrorCode::Unavailable,
                format!("worker {} did not answer: {e}", lease.worker),
            ),
        };
        Ok(reply)
    }
}

/// The `lease_revoke` for `lease`, and the worker's subject it goes to.
fn revoke_message(lease: &Lease, reason: ReasonCode) -> (String, internal::LeaseRevoke) {
    let revoke = internal::LeaseRevoke {
        tenant: lease.address.tenant.as_str().to_string(),
        session: lease.address.session.as_str().to_string(),
        epoch: lease.epoch,
        reason: reason as i32,
    };
    let subject = SysSubject::new(lease.worker.clone(), SysKind::LeaseRevoke);
    (subject.to_string(), revoke)
}

async fn unsubscribe(mut subscriber: Subscriber) {
    if let Err(e) = subscriber.unsubscribe().await {
        tracing::warn!(error = %e, "unsubscribe failed");
    }
}

fn protobuf_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, ContentType::Protobuf.header_value());
    headers
}

/// SHA-256 over the verb, the session and the decoded payload's protobuf encoding (maps
/// are ordered, so equal messages hash equally whatever their wire encoding was).
fn command_hash(command: &Command) -> Result<Vec<u8>, wafleet_bus_schema::EncodeError> {
    let body = command.body.encode(ContentType::Protobuf)?;
    let mut hash = Sha256::new();
    hash.update(command.body.verb().as_str().as_bytes());
    hash.update([0]);
    hash.update(command.address.session.as_str().as_bytes());
    hash.update([0]);
    hash.update(&body);
    Ok(hash.finalize().to_vec())
}

fn replay(
    command_id: &str,
    verb: &str,
    session: &str,
    payload_hash: &[u8],
    stored: &StoredReply,
) -> v1::CommandReply {
    if stored.verb != verb || stored.session != session || stored.payload_hash != payload_hash {
        return v1::CommandReply::with_error(
            command_id,
            ErrorCode::IdempotencyKeyReused,
            format!(
                "command id {command_id} was used for {} on session {}",
                stored.verb, stored.session
            ),
        );
    }
    match decode::<v1::CommandReply>(&stored.reply, ContentType::Protobuf) {
        Ok(mut reply) => {
            reply.replayed = true;
            reply
        }
        Err(e) => internal_error(command_id, e),
    }
}

fn is_transient(code: i32) -> bool {
    [
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

fn unavailable(command_id: &str, error: impl std::fmt::Display) -> v1::CommandReply {
    tracing::warn!(%error, "command not run: the registry is unavailable");
    v1::CommandReply::with_error(
        command_id,
        ErrorCode::Unavailable,
        format!("the session registry is unavailable ({error}); try again"),
    )
}

fn internal_error(command_id: &str, error: impl std::fmt::Display) -> v1::CommandReply {
    tracing::error!(%error, "command failed inside the coordinator");
    v1::CommandReply::with_error(command_id, ErrorCode::Internal, error.to_string())
}

fn registry_error_reply(
    command_id: &str,
    address: &SessionAddress,
    error: RegistryError,
) -> v1::CommandReply {
    match error {
        RegistryError::UnknownSession(_) => v1::CommandReply::with_error(
            command_id,
            ErrorCode::UnknownSession,
            format!(
                "no session {} in tenant {}",
                address.session, address.tenant
            ),
        ),
        RegistryError::AlreadyExists(_) => v1::CommandReply::with_error(
            command_id,
            ErrorCode::AlreadyExists,
            format!(
                "session {} exists in tenant {}",
                address.session, address.tenant
            ),
        ),
        e @ RegistryError::Unavailable(_) => unavailable(command_id, e),
        other => internal_error(command_id, other),
    }
}

fn lease_error(code: ErrorCode, message: String) -> internal::LeaseReply {
    internal::LeaseReply {
        outcome: Some(internal::lease_reply::Outcome::Error(v1::CommandError {
            retry_after: None,
            code: code as i32,
            message,
        })),
    }
}

fn lease_reply(result: Result<Lease, RegistryError>) -> internal::LeaseReply {
    match result {
        Ok(lease) => internal::LeaseReply {
            outcome: Some(internal::lease_reply::Outcome::Lease(lease.to_grant())),
        },
        Err(RegistryError::Fenced { current, .. }) => {
            lease_error(ErrorCode::StaleEpoch, format!("epoch {current} is current"))
        }
        Err(e @ RegistryError::UnknownSession(_)) => {
            lease_error(ErrorCode::UnknownSession, e.to_string())
        }
        Err(e @ RegistryError::NotLeased { .. }) => {
            lease_error(ErrorCode::NotLeased, e.to_string())
        }
        Err(RegistryError::StaleBlobVersion {
            version, committed, ..
        }) => lease_error(
            ErrorCode::Conflict,
            format!("blob version {version} is not above the committed {committed}"),
        ),
        Err(e @ RegistryError::Unavailable(_)) => {
            tracing::warn!(error = %e, "lease operation: registry unavailable");
            lease_error(ErrorCode::Unavailable, e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "lease operation failed");
            lease_error(ErrorCode::Internal, e.to_string())
        }
    }
}

/// Whether a worker's message is a heartbeat (by its subject; a malformed subject is not).
fn is_heartbeat(subject: &str) -> bool {
    SysSubject::parse(subject).is_ok_and(|s| s.kind == SysKind::Heartbeat)
}
