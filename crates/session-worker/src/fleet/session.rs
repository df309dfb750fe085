//! One leased session: load its blob, run its driver, publish its events, answer its
//! commands, keep its lease, and end it cleanly.
//!
//! The task owns the session at one epoch. Its events get sequence numbers 1, 2, … in
//! the order the driver produced them and are published in that order by a publisher of
//! its own (each one acked by the stream before the next), so a slow stream never stalls
//! the socket. Before it releases the lease the task closes the socket and waits for its
//! events to be acked: the next holder's events always come after.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::internal::v1::forwarded_command::Command as Forwarded;
use wafleet_bus_schema::time::{proto_duration, timestamp};
use wafleet_bus_schema::v1::{self, session_event::Payload, ErrorCode, ReasonCode, SessionStatus};
use wafleet_bus_schema::{CommandSubject, CommandVerb, SessionAddress};

use super::bus::{FleetBus, LeaseError};
use super::inbound::{BusSink, Emitter, Queued};
use super::lease::LeaseClock;
use super::metrics as m;
use super::reason::bus_reason;
use super::send::{SendContext, SendDesk, SendRate};
use super::store::{blob_id, BlobFence, FenceError, FleetStore, OpenError, Vault};
use crate::driver::{ControlError, DriverConfig, DriverControl, SessionDriver};
use crate::event::DriverEvent;
use crate::store::SessionStore;

/// What the worker tells a running session.
#[derive(Debug)]
pub enum ToSession {
    /// The coordinator revoked the lease: close and stop (the lease is already ended).
    Revoke {
        /// Why.
        reason: ReasonCode,
        /// Answered once the socket is closed and the events are flushed.
        done: oneshot::Sender<()>,
    },
    /// A backend's command for this epoch.
    Command {
        /// The command.
        command: Forwarded,
        /// The reply.
        reply: oneshot::Sender<v1::CommandReply>,
    },
    /// The worker is shutting down: close, flush, release for another worker.
    Drain,
    /// A newer grant of this session arrived: this epoch is over; close without a word.
    Superseded,
}

/// The worker's notice that a session task ended.
#[derive(Debug)]
pub struct Ended {
    /// The session.
    pub address: SessionAddress,
    /// The epoch it ran at.
    pub epoch: u64,
}

/// How a session's run is paced.
#[derive(Debug, Clone)]
pub struct SessionPacing {
    /// How often the lease is renewed.
    pub renew_every: Duration,
    /// How many times an event publish is tried before it counts as failed.
    pub publish_attempts: u32,
    /// How long a session keeps its lease while the blob store does not answer its load
    /// (retrying at [`blob_retry_pause`]) before it hands the lease back with
    /// `BLOB_STORE_UNAVAILABLE`.
    pub blob_wait: Duration,
    /// The session's send rate limit.
    pub send_rate: SendRate,
}

/// The pause after failed blob load attempt `attempt` (1, 2, …): 250 ms, doubling, at most
/// 1 s.
pub fn blob_retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.saturating_sub(1).min(2))
}

/// Everything a session task needs.
pub struct SessionSpec {
    /// The session.
    pub address: SessionAddress,
    /// The accepted grant.
    pub grant: internal::LeaseGrant,
    /// The lease's local deadline (from the grant; the worker extends it on heartbeat
    /// acknowledgements).
    pub clock: LeaseClock,
    /// The task of this session's older epoch, told to stop: waited for before anything
    /// else, so its socket is closed before this one opens.
    pub previous: Option<tokio::task::JoinHandle<()>>,
    /// The bus.
    pub bus: FleetBus,
    /// The blob vault.
    pub vault: Arc<Vault>,
    /// The driver settings (server, timing); the label is set per session.
    pub driver: DriverConfig,
    /// Pacing.
    pub pacing: SessionPacing,
}

/// The bus fence: a blob commit request to the coordinator.
struct BusFence {
    bus: FleetBus,
    address: SessionAddress,
}

#[async_trait]
impl BlobFence for BusFence {
    async fn commit(&self, epoch: u64, version: u64) -> Result<(), FenceError> {
        match self.bus.commit_blob(&self.address, epoch, version).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_fenced() => Err(FenceError::Fenced(e.to_string())),
            Err(e) => Err(FenceError::Unavailable(e.to_string())),
        }
    }
}

/// Why the run ended, and what to tell the coordinator.
#[derive(Debug)]
enum End {
    /// The lease is gone (expired locally, renewal refused, superseded): no word.
    Lost(&'static str),
    /// Revoked by the coordinator.
    Revoked(ReasonCode, Option<oneshot::Sender<()>>),
    /// The worker drains.
    Drain,
    /// The session ended for good (or must be granted again): release with the reason.
    Release {
        status: SessionStatus,
        reason: ReasonCode,
        message: String,
    },
}

fn status_label(status: SessionStatus) -> Option<&'static str> {
    match status {
        SessionStatus::Starting => Some("starting"),
        SessionStatus::ScanQrCode => Some("scan_qr_code"),
        SessionStatus::Working => Some("working"),
        _ => None,
    }
}

struct Run {
    address: SessionAddress,
    epoch: u64,
    bus: FleetBus,
    clock: LeaseClock,
    emitter: Arc<Emitter>,
    status: SessionStatus,
    reason: ReasonCode,
    qr_count: u32,
}

impl Run {
    fn emit(&mut self, payload: Payload) {
        self.emitter.emit(payload, None);
    }

    fn set_status(&mut self, status: SessionStatus, reason: ReasonCode, message: String) {
        if let Some(old) = status_label(self.status) {
            metrics::gauge!(m::SESSIONS, "status" => old).decrement(1.0);
        }
        if let Some(new) = status_label(status) {
            metrics::gauge!(m::SESSIONS, "status" => new).increment(1.0);
        }
        self.status = status;
        self.reason = reason;
        self.emit(Payload::Status(v1::SessionStatusChanged {
            status: status as i32,
            reason: reason as i32,
            message,
        }));
    }

    fn info(&self, status: SessionStatus, reason: ReasonCode) -> v1::SessionInfo {
        v1::SessionInfo {
            tenant: self.address.tenant.as_str().to_string(),
            session: self.address.session.as_str().to_string(),
            status: status as i32,
            reason: reason as i32,
            epoch: self.epoch,
            worker_id: self.bus.worker().as_str().to_string(),
            ..Default::default()
        }
    }

    /// A driver event as bus events. `Some` ends the run.
    fn on_driver_event(&mut self, event: DriverEvent, store: &FleetStore) -> Option<End> {
        match event {
            DriverEvent::Qr {
                code,
                expires_at,
                remaining,
                ..
            } => {
                if self.status != SessionStatus::ScanQrCode {
                    self.set_status(
                        SessionStatus::ScanQrCode,
                        ReasonCode::Unspecified,
                        "scan the QR code or request a pairing code".into(),
                    );
                }
                self.qr_count += 1;
                self.emit(Payload::Qr(v1::QrCode {
                    code: code.expose().to_string(),
                    expires_at: Some(timestamp(unix_ms_time(expires_at))),
                    sequence: self.qr_count,
                    refs_remaining: remaining,
                }));
            }
            DriverEvent::PairingCode { code, expires_at } => {
                self.emit(Payload::PairingCode(v1::PairingCodeIssued {
                    code: code.expose().to_string(),
                    expires_at: Some(timestamp(unix_ms_time(expires_at))),
                }));
            }
            DriverEvent::PairingCodeFailed { reason } => self.set_status(
                SessionStatus::ScanQrCode,
                ReasonCode::PairingFailed,
                format!("pairing code failed: {reason}; QR linking goes on"),
            ),
            DriverEvent::AuthFailure { reason, .. } => self.set_status(
                SessionStatus::ScanQrCode,
                ReasonCode::PairingFailed,
                format!("the phone's pairing did not verify ({reason}); nothing was saved"),
            ),
            DriverEvent::Paired { jid, .. } => {
                self.qr_count = 0;
                self.set_status(
                    SessionStatus::Starting,
                    ReasonCode::Unspecified,
                    format!("linked as {jid}; logging in"),
                );
            }
            DriverEvent::Ready { jid, lid } => {
                self.emit(Payload::Ready(v1::Ready {
                    jid: jid.clone(),
                    lid: lid.unwrap_or_default(),
                    push_name: String::new(),
                }));
                self.set_status(
                    SessionStatus::Working,
                    ReasonCode::Unspecified,
                    format!("logged in as {jid}"),
                );
            }
            DriverEvent::PreKeysUploaded { count } => {
                debug!(session = %self.address, count, "prekeys saved and uploaded")
            }
            // The driver gives inbound messaging events to the bus sink (`inbound::BusSink`),
            // not to its event channel; these arms are not reached. A send's
            // `message_sent` event is published by its command (`send`).
            DriverEvent::Message(m) => {
                debug!(session = %self.address, id = %m.id, kind = %m.kind, "message")
            }
            DriverEvent::Receipt(r) => {
                debug!(session = %self.address, id = %r.id, kind = %r.kind, "receipt")
            }
            DriverEvent::Undecryptable(u) => {
                debug!(session = %self.address, id = %u.id, reason = %u.reason, "undecryptable message")
            }
            DriverEvent::MessageSent(sent) => {
                debug!(session = %self.address, id = %sent.id, "message sent")
            }
            DriverEvent::Disconnected {
                reason,
                will_reconnect,
            } => {
                let code = bus_reason(&reason);
                let retry_in = will_reconnect.then(|| proto_duration(Duration::ZERO));
                self.emit(Payload::Disconnected(v1::Disconnected {
                    reason: code as i32,
                    will_reconnect,
                    retry_in,
                    message: reason.clone(),
                }));
                if will_reconnect {
                    metrics::counter!(m::RECONNECTS, "reason" => reason).increment(1);
                    if self.status == SessionStatus::Working {
                        self.set_status(SessionStatus::Starting, code, "reconnecting".into());
                    }
                }
            }
            DriverEvent::Failed { reason, detail } => {
                if store.is_fenced() {
                    return Some(End::Lost("a blob write was fenced off"));
                }
                if reason == "storage_error" {
                    // Not fenced: the store or the coordinator did not answer (S3 down, a
                    // leader that died with the commit). Nothing unsaved was sent; hand the
                    // lease back to be granted again, as when the blob cannot be loaded.
                    let reason = if store.store_unreachable() {
                        ReasonCode::BlobStoreUnavailable
                    } else {
                        ReasonCode::ConnectionLost
                    };
                    return Some(End::Release {
                        status: SessionStatus::Starting,
                        reason,
                        message: format!("the blob could not be saved: {detail}"),
                    });
                }
                let code = bus_reason(&reason);
                let status = match code {
                    ReasonCode::LoggedOut => SessionStatus::Stopped,
                    _ => SessionStatus::Failed,
                };
                return Some(End::Release {
                    status,
                    reason: code,
                    message: detail,
                });
            }
        }
        None
    }

    /// A forwarded command. Stop is answered at once and ends the run; the others talk to
    /// the driver (a logout waits up to 10 s for the server) and come back as a future
    /// that owns everything it needs, so the run goes on meanwhile (the lease deadline
    /// above all).
    fn on_command(&self, command: Forwarded, control: &DriverControl) -> CommandStep {
        match command {
            Forwarded::Stop(stop) => CommandStep::Done(
                Box::new(v1::CommandReply::with_session(
                    stop.command_id,
                    self.info(SessionStatus::Stopped, ReasonCode::Requested),
                )),
                End::Release {
                    status: SessionStatus::Stopped,
                    reason: ReasonCode::Requested,
                    message: "stopped by a command".into(),
                },
            ),
            Forwarded::Logout(logout) => {
                let control = control.clone();
                let stopped = self.info(SessionStatus::Stopped, ReasonCode::LoggedOut);
                CommandStep::Pending(Box::pin(async move {
                    match control.logout().await {
                        // The driver ends with `logged_out`; the run ends on that event.
                        Ok(()) => v1::CommandReply::with_session(logout.command_id, stopped),
                        Err(e) => v1::CommandReply::with_error(
                            logout.command_id,
                            control_error_code(&e),
                            e.to_string(),
                        ),
                    }
                }))
            }
            Forwarded::RequestPairingCode(request) => {
                let control = control.clone();
                CommandStep::Pending(Box::pin(async move {
                    match control.request_pairing_code(&request.phone_number).await {
                        Ok(issued) => v1::CommandReply::with_pairing_code(
                            request.command_id,
                            v1::PairingCodeIssued {
                                code: issued.code.expose().to_string(),
                                expires_at: Some(timestamp(unix_ms_time(issued.expires_at))),
                            },
                        ),
                        Err(e) => v1::CommandReply::with_error(
                            request.command_id,
                            control_error_code(&e),
                            e.to_string(),
                        ),
                    }
                }))
            }
        }
    }

    /// A command that arrives before the driver runs (the blob is loading): Stop ends the
    /// run; the others are refused as unavailable for now.
    fn on_early_command(&self, command: Forwarded) -> (v1::CommandReply, Option<End>) {
        match command {
            Forwarded::Stop(stop) => (
                v1::CommandReply::with_session(
                    stop.command_id,
                    self.info(SessionStatus::Stopped, ReasonCode::Requested),
                ),
                Some(End::Release {
                    status: SessionStatus::Stopped,
                    reason: ReasonCode::Requested,
                    message: "stopped by a command".into(),
                }),
            ),
            Forwarded::Logout(c) => (Self::still_loading(c.command_id), None),
            Forwarded::RequestPairingCode(c) => (Self::still_loading(c.command_id), None),
        }
    }

    fn still_loading(command_id: String) -> v1::CommandReply {
        v1::CommandReply::with_error(
            command_id,
            ErrorCode::Unavailable,
            "the session is starting (its blob is loading); try again",
        )
    }
}

/// What [`Run::on_command`] made of a command.
enum CommandStep {
    /// Answered; the run ends.
    Done(Box<v1::CommandReply>, End),
    /// Answered when the future completes.
    Pending(BoxFuture<'static, v1::CommandReply>),
}

/// The reply code for a refused control request.
fn control_error_code(e: &ControlError) -> ErrorCode {
    match e {
        ControlError::InvalidPhone(_) => ErrorCode::InvalidPhone,
        ControlError::InvalidRecipient(_) => ErrorCode::InvalidRecipient,
        ControlError::NoSuchUser(_) => ErrorCode::NoSuchUser,
        ControlError::ReferenceReused(_) => ErrorCode::IdempotencyKeyReused,
        ControlError::NotLinking
        | ControlError::PairingCodeForOtherPhone
        | ControlError::NotLoggedIn
        | ControlError::NotConnected => ErrorCode::InvalidState,
        ControlError::PairingCodeFailed(_)
        | ControlError::LogoutFailed(_)
        | ControlError::Timeout
        | ControlError::SendFailed(_)
        | ControlError::ConnectionLost
        | ControlError::Ended => ErrorCode::Unavailable,
        ControlError::Storage(_) => ErrorCode::Internal,
    }
}

fn unix_ms_time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Publishes a session's events in order until its channel closes, and tells whoever
/// waits for one how its publication ended.
async fn publisher(bus: FleetBus, attempts: u32, mut events: mpsc::UnboundedReceiver<Queued>) {
    while let Some(Queued {
        event,
        created,
        acked,
    }) = events.recv().await
    {
        let result = bus.publish_event(&event, created, attempts).await;
        if let Err(e) = &result {
            warn!(tenant = %event.tenant, session = %event.session, epoch = event.epoch, sequence = event.sequence, error = %e, "event not published");
        }
        if let Some(acked) = acked {
            let _ = acked.send(result.map_err(|e| e.to_string()));
        }
    }
}

/// Runs one leased session until it ends; tells the worker through `ended`.
pub async fn run(
    mut spec: SessionSpec,
    mut inbox: mpsc::Receiver<ToSession>,
    ended: mpsc::UnboundedSender<Ended>,
) {
    let address = spec.address.clone();
    let epoch = spec.grant.epoch;
    if let Some(mut previous) = spec.previous.take() {
        if tokio::time::timeout(Duration::from_secs(10), &mut previous)
            .await
            .is_err()
        {
            warn!(session = %address, epoch, "the superseded epoch did not end in 10 s: stopping it");
            previous.abort();
            let _ = previous.await;
        }
    }
    let clock = spec.clock.clone();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let publisher = tokio::spawn(publisher(
        spec.bus.clone(),
        spec.pacing.publish_attempts,
        events_rx,
    ));
    let mut run = Run {
        address: address.clone(),
        epoch,
        bus: spec.bus.clone(),
        clock: clock.clone(),
        emitter: Arc::new(Emitter::new(
            address.clone(),
            epoch,
            spec.bus.worker().as_str().to_string(),
            events_tx,
        )),
        status: SessionStatus::Unspecified,
        reason: ReasonCode::Unspecified,
        qr_count: 0,
    };
    info!(session = %address, epoch, "lease accepted: starting the session");
    run.set_status(
        SessionStatus::Starting,
        ReasonCode::Unspecified,
        format!("leased at epoch {epoch}"),
    );

    let end = drive(&spec, &mut run, &mut inbox).await;
    let (release, answer) = match end {
        End::Lost(why) => {
            info!(session = %address, epoch, why, "lease lost: the session stopped without a word");
            // Handed back once the socket is closed: if the coordinator still counts the
            // lease as ours (it only lapsed here, e.g. heartbeats went unanswered while
            // coordinators changed leader), the session is granted again now instead of at
            // its expiry; if the lease has moved, the coordinator refuses and nothing changes.
            (Some(ReasonCode::LeaseLost), None)
        }
        End::Revoked(reason, done) => {
            if reason == ReasonCode::Requested {
                run.set_status(SessionStatus::Stopped, reason, "stopped".into());
            } else {
                run.emit(Payload::Disconnected(v1::Disconnected {
                    reason: reason as i32,
                    will_reconnect: false,
                    retry_in: None,
                    message: "the lease was revoked".into(),
                }));
            }
            (None, done)
        }
        End::Drain => {
            if clock.is_live() {
                run.emit(Payload::Disconnected(v1::Disconnected {
                    reason: ReasonCode::WorkerDraining as i32,
                    will_reconnect: true,
                    retry_in: None,
                    message: "the worker is shutting down; another worker takes over".into(),
                }));
            }
            (Some(ReasonCode::WorkerDraining), None)
        }
        End::Release {
            status,
            reason,
            message,
        } => {
            if clock.is_live() {
                // Said once: a session that waited for the blob store said so already.
                if (run.status, run.reason) != (status, reason) {
                    run.set_status(status, reason, message);
                }
                (Some(reason), None)
            } else {
                (None, None)
            }
        }
    };
    if let Some(label) = status_label(run.status) {
        metrics::gauge!(m::SESSIONS, "status" => label).decrement(1.0);
    }
    // Flush: every event of this epoch is acked before the lease is handed back.
    drop(run);
    if tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .is_err()
    {
        warn!(session = %address, epoch, "events still unacked after 10 s; releasing anyway");
    }
    if let Some(reason) = release {
        metrics::counter!(m::SESSIONS_ENDED, "reason" => super::reason::label(reason)).increment(1);
        match spec.bus.release(&address, epoch, reason).await {
            Ok(_) => info!(session = %address, epoch, ?reason, "lease released"),
            Err(e) => {
                warn!(session = %address, epoch, ?reason, error = %e, "lease release refused or unanswered")
            }
        }
    }
    if let Some(done) = answer {
        let _ = done.send(());
    }
    let _ = ended.send(Ended { address, epoch });
}

/// Keeps the lease renewed (the fallback to heartbeat renewals) without ever blocking the
/// task: a renewal is a future of its own, polled as one branch of the task's `select!`,
/// and at most one is in flight.
struct Renewals {
    every: tokio::time::Interval,
    in_flight: Option<BoxFuture<'static, Result<internal::LeaseGrant, LeaseError>>>,
    bus: FleetBus,
    address: SessionAddress,
    epoch: u64,
}

impl Renewals {
    fn new(spec: &SessionSpec) -> Renewals {
        let start = tokio::time::Instant::now() + spec.pacing.renew_every;
        let mut every = tokio::time::interval_at(start, spec.pacing.renew_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Renewals {
            every,
            in_flight: None,
            bus: spec.bus.clone(),
            address: spec.address.clone(),
            epoch: spec.grant.epoch,
        }
    }

    /// Waits for the next tick (then sends a renewal) or for the renewal's answer (then
    /// applies it to `clock`). Cancel-safe: a renewal in flight stays in flight. `Some`
    /// when the coordinator refused the renewal: the lease is gone.
    async fn step(&mut self, clock: &LeaseClock) -> Option<End> {
        let Some(in_flight) = self.in_flight.as_mut() else {
            self.every.tick().await;
            let (bus, address, epoch) = (self.bus.clone(), self.address.clone(), self.epoch);
            self.in_flight = Some(Box::pin(async move { bus.renew(&address, epoch).await }));
            return None;
        };
        let answer = in_flight.await;
        self.in_flight = None;
        match answer {
            Ok(grant) => clock.renewed(&grant),
            Err(e) if e.is_fenced() => {
                clock.expire();
                return Some(End::Lost("the coordinator refused the renewal"));
            }
            Err(e) => {
                debug!(session = %self.address, epoch = self.epoch, error = %e, "lease renewal unanswered; the lease stays until its deadline")
            }
        }
        None
    }
}

/// The next `send` request, or never without a subscription.
async fn next_send(sends: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sends {
        Some(sends) => sends.next().await,
        None => std::future::pending().await,
    }
}

/// Waits until the local deadline has passed (the deadline may move forward meanwhile:
/// heartbeat acknowledgements and renewals extend it).
async fn lease_runs_out(clock: &LeaseClock) {
    loop {
        tokio::time::sleep_until(tokio::time::Instant::from_std(clock.deadline())).await;
        if !clock.is_live() {
            return;
        }
    }
}

/// Counts a session waiting for the blob store in the gauge while it lives.
struct WaitingForBlobStore;

impl WaitingForBlobStore {
    fn start() -> WaitingForBlobStore {
        metrics::gauge!(m::WAITING_FOR_BLOB_STORE).increment(1.0);
        WaitingForBlobStore
    }
}

impl Drop for WaitingForBlobStore {
    fn drop(&mut self) {
        metrics::gauge!(m::WAITING_FOR_BLOB_STORE).decrement(1.0);
    }
}

/// What the task hears while its driver does not run yet: the lease's end, revokes,
/// drain, supersession, commands (Stop ends the run, others are refused for now).
async fn lease_or_message(
    run: &Run,
    inbox: &mut mpsc::Receiver<ToSession>,
    renewals: &mut Renewals,
) -> End {
    loop {
        tokio::select! {
            biased;
            _ = lease_runs_out(&run.clock) => return End::Lost("the lease ran out while the blob loaded"),
            message = inbox.recv() => match message {
                Some(ToSession::Revoke { reason, done }) => return End::Revoked(reason, Some(done)),
                Some(ToSession::Drain) | None => return End::Drain,
                Some(ToSession::Superseded) => return End::Lost("a newer grant superseded this epoch"),
                Some(ToSession::Command { command, reply }) => {
                    let (answer, end) = run.on_early_command(command);
                    let _ = reply.send(answer);
                    if let Some(end) = end {
                        return end;
                    }
                }
            },
            end = renewals.step(&run.clock) => {
                if let Some(end) = end {
                    return end;
                }
            }
        }
    }
}

/// Loads the session's blob, keeping the lease while the store does not answer: retries
/// at [`blob_retry_pause`] for up to `pacing.blob_wait`, all the while listening to the
/// lease (deadline, revoke, drain, supersession, Stop). The first failure is published as
/// `STARTING` / `BLOB_STORE_UNAVAILABLE`; giving up hands the lease back with that reason.
async fn load_blob(
    spec: &SessionSpec,
    run: &mut Run,
    inbox: &mut mpsc::Receiver<ToSession>,
    renewals: &mut Renewals,
    fence: &Arc<dyn BlobFence>,
) -> Result<Arc<FleetStore>, End> {
    let address = &spec.address;
    let epoch = spec.grant.epoch;
    let id = blob_id(address).map_err(|e| End::Release {
        status: SessionStatus::Failed,
        reason: ReasonCode::InternalFailure,
        message: format!("no blob id for {address}: {e}"),
    })?;
    let give_up_at = tokio::time::Instant::now() + spec.pacing.blob_wait;
    let mut waiting: Option<WaitingForBlobStore> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let open = FleetStore::open(
            Arc::clone(&spec.vault),
            id.clone(),
            epoch,
            Arc::clone(fence),
            run.clock.clone(),
        );
        let opened = tokio::select! {
            biased;
            end = lease_or_message(run, inbox, renewals) => return Err(end),
            opened = open => opened,
        };
        let why = match opened {
            Ok(store) => {
                if waiting.is_some() {
                    info!(session = %address, epoch, attempt, "blob store answered: the session starts");
                }
                return Ok(Arc::new(store));
            }
            Err(OpenError::Rejected(why)) => {
                warn!(session = %address, epoch, %why, "session blob rejected; left as it is");
                return Err(End::Release {
                    status: SessionStatus::Failed,
                    reason: ReasonCode::BlobRejected,
                    message: why,
                });
            }
            Err(OpenError::Unavailable(why)) => why,
        };
        metrics::counter!(m::BLOB_STORE_ERRORS, "op" => "load").increment(1);
        if waiting.is_none() {
            warn!(session = %address, epoch, %why, wait_ms = spec.pacing.blob_wait.as_millis() as u64, "blob store unreachable; keeping the lease and retrying");
            waiting = Some(WaitingForBlobStore::start());
            if run.clock.is_live() {
                run.set_status(
                    SessionStatus::Starting,
                    ReasonCode::BlobStoreUnavailable,
                    format!("waiting for the blob store: {why}"),
                );
            }
        } else {
            debug!(session = %address, epoch, %why, attempt, "blob store still unreachable");
        }
        let now = tokio::time::Instant::now();
        // The last attempt is made when the wait ends.
        let retry_at = (now + blob_retry_pause(attempt)).min(give_up_at);
        if now >= give_up_at {
            warn!(session = %address, epoch, %why, attempts = attempt, "blob store unreachable; handing the lease back");
            return Err(End::Release {
                status: SessionStatus::Starting,
                reason: ReasonCode::BlobStoreUnavailable,
                message: format!("the blob store did not answer: {why}"),
            });
        }
        tokio::select! {
            biased;
            end = lease_or_message(run, inbox, renewals) => return Err(end),
            _ = tokio::time::sleep_until(retry_at) => {}
        }
    }
}

/// Loads the blob, starts the driver and runs until something ends the session; returns
/// once the socket is closed.
///
/// Nothing the task awaits can hold up the lease deadline: renewals ([`Renewals`]) and
/// forwarded commands are futures of their own, polled as branches of one `select!`
/// whose first branch is the deadline. When the lease is lost (the deadline passed, a
/// renewal or a write was refused, a newer epoch was granted) the socket is dropped at
/// once ([`SessionDriver::finish_by`] now), even if the driver is in a blob save waiting
/// for a commit; otherwise the driver closes it cleanly, but no later than the deadline.
async fn drive(spec: &SessionSpec, run: &mut Run, inbox: &mut mpsc::Receiver<ToSession>) -> End {
    let address = &spec.address;
    let epoch = spec.grant.epoch;
    let fence: Arc<dyn BlobFence> = Arc::new(BusFence {
        bus: spec.bus.clone(),
        address: address.clone(),
    });
    let mut renewals = Renewals::new(spec);
    let store = match load_blob(spec, run, inbox, &mut renewals, &fence).await {
        Ok(store) => store,
        Err(end) => return end,
    };
    if !run.clock.is_live() {
        return End::Lost("the lease ran out while the blob loaded");
    }
    let mut config = spec.driver.clone();
    config.label = address.to_string();
    config.may_connect = Some(crate::driver::ConnectGate::new({
        let clock = run.clock.clone();
        move || clock.is_live()
    }));
    config.inbound = crate::driver::Inbound::Sink(Arc::new(BusSink {
        emitter: Arc::clone(&run.emitter),
        clock: run.clock.clone(),
    }));
    let store_dyn: Arc<dyn SessionStore> = store.clone();
    let mut driver = match SessionDriver::start(config, store_dyn) {
        Ok(driver) => driver,
        Err(e) => {
            return End::Release {
                status: SessionStatus::Failed,
                reason: ReasonCode::InternalFailure,
                message: format!("the session could not start: {e}"),
            }
        }
    };
    let control = driver.control();
    let mut commands: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    // `send` commands come straight to this holder (see `send`).
    let send_subject = CommandSubject::new(address.clone(), CommandVerb::Send).to_string();
    let mut sends = match spec.bus.client().subscribe(send_subject).await {
        Ok(sends) => Some(sends),
        Err(e) => {
            warn!(session = %address, epoch, error = %e, "cannot subscribe to send commands; sends get no answer from this holder");
            None
        }
    };
    let send_context = SendContext {
        desk: Arc::new(SendDesk::new(spec.pacing.send_rate)),
        control: control.clone(),
        emitter: Arc::clone(&run.emitter),
        clock: run.clock.clone(),
        client: spec.bus.client().clone(),
    };
    let end = loop {
        tokio::select! {
            biased;
            _ = lease_runs_out(&run.clock) => break End::Lost("the lease ran out"),
            message = inbox.recv() => match message {
                Some(ToSession::Revoke { reason, done }) => break End::Revoked(reason, Some(done)),
                Some(ToSession::Drain) | None => break End::Drain,
                Some(ToSession::Superseded) => break End::Lost("a newer grant superseded this epoch"),
                Some(ToSession::Command { command, reply }) => match run.on_command(command, &control) {
                    CommandStep::Done(answer, end) => {
                        let _ = reply.send(*answer);
                        break end;
                    }
                    CommandStep::Pending(answer) => commands.push(Box::pin(async move {
                        let _ = reply.send(answer.await);
                    })),
                },
            },
            Some(()) = commands.next(), if !commands.is_empty() => {}
            request = next_send(&mut sends) => match request {
                Some(request) => {
                    commands.push(Box::pin(super::send::handle(send_context.clone(), request)))
                }
                None => sends = None,
            },
            end = renewals.step(&run.clock) => {
                if let Some(end) = end {
                    break end;
                }
            }
            event = driver.next_event() => {
                if !run.clock.is_live() {
                    break End::Lost("the lease ran out");
                }
                match event {
                    Some(event) => {
                        if let Some(end) = run.on_driver_event(event, &store) {
                            break end;
                        }
                    }
                    None => break End::Release {
                        status: SessionStatus::Failed,
                        reason: ReasonCode::InternalFailure,
                        message: "the driver ended without a reason".into(),
                    },
                }
            }
        }
    };
    // No more sends for this holder.
    drop(sends);
    // Close the socket before anything else is said or released: at once when the lease
    // is lost, else cleanly but never past the deadline.
    let close_by = match &end {
        End::Lost(_) => tokio::time::Instant::now(),
        _ => tokio::time::Instant::from_std(run.clock.deadline()),
    };
    let exit = driver.finish_by(close_by).await;
    debug!(session = %address, epoch, ?exit, "driver finished: the socket is closed");
    // Commands still waiting on the driver get their answers now: the driver has ended,
    // so each one resolves at once (a logout the driver confirmed as it ended, which is
    // what ended it, answers its success; the others hear that the driver ended).
    let answered = tokio::time::timeout(Duration::from_secs(1), async {
        while commands.next().await.is_some() {}
    })
    .await;
    if answered.is_err() {
        warn!(session = %address, epoch, "commands still unanswered after the driver ended; dropped");
    }
    if let End::Release {
        reason: ReasonCode::LoggedOut,
        ..
    } = &end
    {
        // The identity is gone on the phone: keep none (a fenced tombstone write).
        let store = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || store.mark_logged_out()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(session = %address, error = %e, "clearing the logged-out blob failed")
            }
            Err(e) => warn!(session = %address, error = %e, "clearing the logged-out blob failed"),
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_loads_are_retried_from_250_ms_doubling_to_1_s() {
        let pauses: Vec<u64> = (1..=6)
            .map(|a| blob_retry_pause(a).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [250, 500, 1000, 1000, 1000, 1000]);
    }
}
