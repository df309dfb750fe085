//! Leader election: several coordinators may run, exactly one leads.
//!
//! The leader holds a PostgreSQL session-level advisory lock (`pg_try_advisory_lock`, key
//! `hashtext('wafleet-leader:' || current_schema())`) on a dedicated connection, outside
//! the pool. PostgreSQL frees the lock when that connection ends, so a leader that crashes
//! or loses its database connection stops leading, and a follower, which retries every
//! `retry` interval, takes over.
//!
//! The leader confirms its leadership every `retry` interval by writing the
//! `coordinator_leader` row (its id, `confirmed_at = now()`). When a check fails (the
//! database is down or unreachable) it does not step down at once: it leads *degraded*
//! for at most `pg_grace` after its last confirmation, reconnecting every interval. If it
//! gets the lock back it leads normally again (a new [`LeaderState::term`]); if it finds
//! the lock held by another coordinator it follows at once; when the grace is spent it
//! steps down. A clean stop sets the row's holder to NULL.
//!
//! The row is the leader horizon: a coordinator that takes the lock from another holder
//! reads the previous `confirmed_at` and does not end silent workers' leases before
//! `confirmed_at + pg_grace + dead_after + 1 s` ([`LeaderState::horizon`]), because the
//! previous leader may have acknowledged heartbeats (from memory, while degraded) until
//! `confirmed_at + pg_grace`, each trusted for at most `dead_after`.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// The advisory lock key, as SQL evaluated on the connection (per schema, so tests in
/// their own schemas do not compete).
const LOCK_KEY_SQL: &str = "hashtext('wafleet-leader:' || current_schema())";

/// Leadership could not be handed back cleanly.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipError {
    /// The election task panicked or was cancelled.
    #[error("leadership task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Whether this coordinator leads, and its database backend's pid while it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another coordinator leads, or the database is unreachable.
    Follower,
    /// This coordinator leads; the lock lives (or lived, while degraded) in the backend
    /// with this pid.
    Leader {
        /// `pg_backend_pid()` of the connection holding the lock.
        backend_pid: i32,
    },
}

impl Role {
    /// True when leading.
    pub fn is_leader(self) -> bool {
        matches!(self, Role::Leader { .. })
    }
}

/// What the leader knows about its own leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderState {
    /// +1 every time this coordinator takes the lock (first time, or again after a
    /// database outage): a new term starts a new heard window.
    pub term: u64,
    /// When leadership was last confirmed (taken just before the confirming statement was
    /// sent, so it is no later than the row's `confirmed_at`). `None` while following.
    pub confirmed: Option<Instant>,
    /// The last check failed: leading from memory until `confirmed + pg_grace`.
    pub degraded: bool,
    /// Silent workers' leases must not end before this (database clock), if set.
    pub horizon: Option<SystemTime>,
}

impl LeaderState {
    /// How long this coordinator may still act as leader from what it knows: the time
    /// left until `confirmed + pg_grace`, zero when following or spent.
    pub fn grace_left(&self, pg_grace: Duration) -> Duration {
        self.confirmed
            .map(|at| (at + pg_grace).saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }
}

/// How a coordinator campaigns and leads.
#[derive(Debug, Clone)]
pub struct LeadershipConfig {
    /// How often a follower tries the lock and the leader confirms it.
    pub retry: Duration,
    /// How long a leader keeps leading (degraded) after its last confirmation while the
    /// database cannot be reached.
    pub pg_grace: Duration,
    /// The workers' dead-after window (for the leader horizon).
    pub dead_after: Duration,
    /// This coordinator's id in the `coordinator_leader` row.
    pub id: String,
}

impl LeadershipConfig {
    /// Retrying every `retry`, with a `pg_grace` of 45 s, a dead-after of 3 × `retry`
    /// and an id made of the process id and the start time.
    pub fn new(retry: Duration) -> Self {
        LeadershipConfig {
            retry,
            pg_grace: Duration::from_secs(45),
            dead_after: retry * 3,
            id: default_id(),
        }
    }
}

/// An id for this coordinator: process id and start time (unique enough per host and
/// run; it only tells this coordinator's row from another's).
pub fn default_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("coordinator-{}-{nanos:x}", std::process::id())
}

/// A running election. Dropping it without [`Leadership::stop`] aborts the task, and the
/// lock goes when its connection closes.
pub struct Leadership {
    role: watch::Receiver<Role>,
    state: watch::Receiver<LeaderState>,
    pg_grace: Duration,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Leadership {
    /// Starts campaigning with `config` (the registry's, so the same schema), retrying
    /// every `retry`, with the defaults of [`LeadershipConfig::new`].
    pub fn start(config: tokio_postgres::Config, retry: Duration) -> Leadership {
        Leadership::start_with(config, LeadershipConfig::new(retry))
    }

    /// Starts campaigning with `config` (the registry's, so the same schema) and `lead`.
    pub fn start_with(config: tokio_postgres::Config, lead: LeadershipConfig) -> Leadership {
        let (role_tx, role) = watch::channel(Role::Follower);
        let (state_tx, state) = watch::channel(LeaderState::default());
        let (stop, stop_rx) = watch::channel(false);
        let pg_grace = lead.pg_grace;
        let task = tokio::spawn(campaign(config, lead, role_tx, state_tx, stop_rx));
        Leadership {
            role,
            state,
            pg_grace,
            stop,
            task: Some(task),
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    /// A receiver that sees every role change.
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The leader's view of its leadership.
    pub fn state(&self) -> LeaderState {
        *self.state.borrow()
    }

    /// A receiver that sees every change of [`Leadership::state`].
    pub fn watch_state(&self) -> watch::Receiver<LeaderState> {
        self.state.clone()
    }

    /// The grace this election was started with.
    pub fn pg_grace(&self) -> Duration {
        self.pg_grace
    }

    /// Waits until this coordinator leads.
    pub async fn until_leader(&mut self) -> Role {
        loop {
            let role = *self.role.borrow_and_update();
            if role.is_leader() {
                return role;
            }
            if self.role.changed().await.is_err() {
                return Role::Follower;
            }
        }
    }

    /// Steps down: clears the leader row, unlocks, closes the connection and ends the
    /// task.
    pub async fn stop(mut self) -> Result<(), LeadershipError> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await?;
        }
        Ok(())
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The election's channels and what it knows, shared by the connection attempts.
struct Campaign {
    lead: LeadershipConfig,
    role: watch::Sender<Role>,
    state: watch::Sender<LeaderState>,
    term: u64,
}

impl Campaign {
    fn leading(&self) -> bool {
        self.role.borrow().is_leader()
    }

    fn follow(&self, why: &str) {
        if self.leading() {
            tracing::warn!(why, "stepping down: following");
        }
        self.role.send_replace(Role::Follower);
        self.state.send_replace(LeaderState {
            term: self.term,
            ..LeaderState::default()
        });
    }

    /// A failed check or connection while leading: degraded until the grace is spent.
    fn degrade(&self, why: &str) {
        if !self.leading() {
            return;
        }
        let state = *self.state.borrow();
        if state.grace_left(self.lead.pg_grace).is_zero() {
            self.follow("database unreachable for the whole grace");
            return;
        }
        if !state.degraded {
            tracing::warn!(why, grace_ms = self.lead.pg_grace.as_millis() as u64,
                "database unreachable: leading degraded (heartbeats from memory, commands UNAVAILABLE)");
            self.state.send_modify(|s| s.degraded = true);
        }
    }
}

async fn campaign(
    config: tokio_postgres::Config,
    lead: LeadershipConfig,
    role: watch::Sender<Role>,
    state: watch::Sender<LeaderState>,
    mut stop: watch::Receiver<bool>,
) {
    let retry = lead.retry;
    let mut me = Campaign {
        lead,
        role,
        state,
        term: 0,
    };
    loop {
        if *stop.borrow() {
            me.follow("stopped");
            return;
        }
        let connect = tokio::time::timeout(check_timeout(retry), config.connect(NoTls)).await;
        match connect {
            Ok(Ok((client, connection))) => {
                let mut connection = tokio::spawn(connection);
                let outcome = hold(&client, &mut connection, &mut me, &mut stop).await;
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, "leader election connection failed");
                }
                if *stop.borrow() {
                    if me.leading() && outcome.is_ok() {
                        // A clean step-down: no horizon for the next leader.
                        let _ = client
                            .execute(
                                "UPDATE coordinator_leader SET holder = NULL WHERE id = 1
                                 AND holder = $1",
                                &[&me.lead.id],
                            )
                            .await;
                    }
                    me.follow("stopped");
                    // Unlock explicitly; closing the connection would free it as well.
                    let _ = client
                        .execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY_SQL})"), &[])
                        .await;
                    drop(client);
                    let _ = connection.await;
                    return;
                }
                me.degrade("the election connection failed");
                drop(client);
                connection.abort();
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader election cannot connect");
                me.degrade("cannot connect");
            }
            Err(_) => {
                tracing::warn!("leader election connect timed out");
                me.degrade("connect timed out");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Campaigns and leads on one connection, until it fails or `stop` is set.
async fn hold(
    client: &Client,
    connection: &mut JoinHandle<Result<(), tokio_postgres::Error>>,
    me: &mut Campaign,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), tokio_postgres::Error> {
    let retry = me.lead.retry;
    let backend_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .try_get(0)?;
    // Whether this connection holds the lock (a degraded leader's new connection does
    // not, until it takes it again).
    let mut locked_here = false;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let sent = Instant::now();
        let check = tokio::time::timeout(check_timeout(retry), async {
            if locked_here {
                // Confirm: the row says who leads and since when it surely still did.
                client
                    .execute(
                        "UPDATE coordinator_leader SET holder = $1, confirmed_at = now()
                         WHERE id = 1",
                        &[&me.lead.id],
                    )
                    .await?;
                return Ok::<_, tokio_postgres::Error>(true);
            }
            let locked: bool = client
                .query_one(&format!("SELECT pg_try_advisory_lock({LOCK_KEY_SQL})"), &[])
                .await?
                .try_get(0)?;
            Ok(locked)
        })
        .await;
        let locked = match check {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!("leader election check timed out");
                return Ok(());
            }
        };
        if locked_here {
            me.state.send_modify(|s| {
                s.confirmed = Some(sent);
                s.degraded = false;
            });
        } else if locked {
            // Read the previous holder's horizon, then take the row.
            let row = client
                .query_one(
                    "SELECT holder, confirmed_at + make_interval(secs => $1) AS horizon
                     FROM coordinator_leader WHERE id = 1",
                    &[
                        &(me.lead.pg_grace + me.lead.dead_after + Duration::from_secs(1))
                            .as_secs_f64(),
                    ],
                )
                .await?;
            let previous: Option<String> = row.try_get("holder")?;
            let horizon: Option<SystemTime> = row.try_get("horizon")?;
            client
                .execute(
                    "UPDATE coordinator_leader SET holder = $1, confirmed_at = now()
                     WHERE id = 1",
                    &[&me.lead.id],
                )
                .await?;
            // Our own earlier term needs no horizon: its acknowledgements were all given
            // before now, and the new term's heard window outlasts them.
            let horizon = match previous.as_deref() {
                Some(holder) if holder != me.lead.id => horizon,
                _ => None,
            };
            locked_here = true;
            me.term += 1;
            tracing::info!(backend_pid, term = me.term, previous = ?previous, ?horizon, "leading");
            me.state.send_replace(LeaderState {
                term: me.term,
                confirmed: Some(sent),
                degraded: false,
                horizon,
            });
            me.role.send_replace(Role::Leader { backend_pid });
        } else if me.leading() {
            // Degraded, reconnected, and another coordinator took the lock: follow now.
            me.follow("another coordinator holds the lock");
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => {}
            ended = &mut *connection => {
                tracing::warn!(?ended, "leader election connection closed");
                return Ok(());
            }
        }
    }
}

/// How long a check may take before the connection counts as dead.
fn check_timeout(retry: Duration) -> Duration {
    retry.max(Duration::from_secs(1))
}
