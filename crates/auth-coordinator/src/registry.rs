//! The session registry in PostgreSQL: sessions, workers, leases and stored command
//! replies. Every operation is one SQL transaction (most are one statement), so several
//! coordinators sharing the database never see a half-done change.
//!
//! Times (lease expiry, heartbeats) come from the database's clock (`now()`), so
//! coordinators on hosts with different clocks agree.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};
use wafleet_bus_schema::internal::v1 as internal;
use wafleet_bus_schema::time::timestamp;
use wafleet_bus_schema::v1::{self, ReasonCode, SessionStatus};
use wafleet_bus_schema::{SessionAddress, WorkerId};

use crate::migrations;

/// Where the registry lives.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// A `postgres://` URL.
    pub url: String,
    /// The schema to use (`search_path`); `None` for the server's default (`public`).
    /// Tests give each test its own schema.
    pub schema: Option<String>,
    /// Pool size.
    pub max_connections: usize,
}

impl RegistryConfig {
    /// The config for `url` in the default schema, with a pool of 8.
    pub fn new(url: impl Into<String>) -> Self {
        RegistryConfig {
            url: url.into(),
            schema: None,
            max_connections: 8,
        }
    }

    /// The tokio-postgres config: the URL plus the `search_path`.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, RegistryError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| RegistryError::Config(e.to_string()))?;
        if let Some(schema) = &self.schema {
            let valid = !schema.is_empty()
                && schema.len() <= 63
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(RegistryError::Config(format!(
                    "schema {schema:?} must be 1 to 63 lowercase letters, digits or _"
                )));
            }
            config.options(format!("-c search_path={schema}"));
        }
        if config.get_application_name().is_none() {
            config.application_name("wafleet-coordinator");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        Ok(config)
    }
}

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The URL or schema is not usable.
    #[error("registry config: {0}")]
    Config(String),
    /// The database cannot be reached (no connection from the pool, the connection broke,
    /// the server is shutting down): a transient condition, answered `UNAVAILABLE`.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL refused or failed a statement.
    #[error("registry database: {0}")]
    Database(tokio_postgres::Error),
    /// No such session.
    #[error("no session {0}")]
    UnknownSession(SessionAddress),
    /// create for a session that exists.
    #[error("session {0} exists already")]
    AlreadyExists(SessionAddress),
    /// The caller's epoch is not the session's current lease epoch (or the caller is not
    /// the holder): it lost the lease and must stop writing.
    #[error("session {address}: epoch {epoch} is fenced off; the current epoch is {current}")]
    Fenced {
        /// The session.
        address: SessionAddress,
        /// The epoch the caller presented.
        epoch: u64,
        /// The session's current epoch.
        current: u64,
    },
    /// The epoch is current, but the session is not leased, or not to the caller.
    #[error("session {address}: not leased at epoch {epoch}{}", .holder.as_ref().map(|h| format!(" by this worker (the holder is {h})")).unwrap_or_default())]
    NotLeased {
        /// The session.
        address: SessionAddress,
        /// The epoch the caller presented (the current one).
        epoch: u64,
        /// The holder, if the session is leased to another worker.
        holder: Option<WorkerId>,
    },
    /// A blob version not above the committed one.
    #[error("session {address}: blob version {version} is not above the committed {committed}")]
    StaleBlobVersion {
        /// The session.
        address: SessionAddress,
        /// The version presented.
        version: u64,
        /// The version committed before.
        committed: u64,
    },
    /// A grant found the session held by another worker than expected (a concurrent grant
    /// got there first): nothing was changed.
    #[error("session {address} is leased already{}", .holder.as_ref().map(|h| format!(" (to {h})")).unwrap_or_default())]
    AlreadyLeased {
        /// The session.
        address: SessionAddress,
        /// Its holder now.
        holder: Option<String>,
    },
    /// A row holds a value the registry never writes (a corrupted or foreign row).
    #[error("registry row is invalid: {0}")]
    InvalidRow(String),
}

impl RegistryError {
    /// True when the database could not be reached (a transient condition).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }
}

impl From<deadpool_postgres::PoolError> for RegistryError {
    /// Every pool error (no connection could be made or recycled in time, the pool is
    /// closed) means the database is out of reach.
    fn from(e: deadpool_postgres::PoolError) -> Self {
        RegistryError::Unavailable(e.to_string())
    }
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_connection_failure(&e) {
            RegistryError::Unavailable(e.to_string())
        } else {
            RegistryError::Database(e)
        }
    }
}

/// Whether a statement failed because the connection did (closed, I/O, a connection
/// exception, the server shutting down or starting) rather than because of the statement.
pub fn is_connection_failure(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // Class 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown,
        // cannot connect now.
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// How long a pool waits for, creates or recycles a connection before the registry
/// counts as unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(3);

/// The first retry pause after a release for an unreachable blob store; it doubles with
/// every such release in a row, up to [`BLOB_BACKOFF_CAP`].
pub const BLOB_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest grant backoff after releases for an unreachable blob store.
pub const BLOB_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// A session row.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// Tenant and session.
    pub address: SessionAddress,
    /// Status as the fleet sees it.
    pub status: SessionStatus,
    /// Why it has that status.
    pub reason: ReasonCode,
    /// True after start, false after stop/logout.
    pub desired_running: bool,
    /// The lease holder, if leased.
    pub worker: Option<WorkerId>,
    /// The current (latest granted) epoch; 0 if never leased.
    pub epoch: u64,
    /// When the lease runs out unless renewed.
    pub lease_expires_at: Option<SystemTime>,
    /// The last committed blob version.
    pub blob_version: u64,
    /// The epoch at which it was committed.
    pub blob_epoch: u64,
    /// The account's JID once linked.
    pub jid: String,
    /// Labels from create.
    pub metadata: BTreeMap<String, String>,
    /// When the session was created.
    pub created_at: SystemTime,
    /// When the row last changed.
    pub updated_at: SystemTime,
}

impl SessionRecord {
    /// The bus form.
    pub fn to_info(&self) -> v1::SessionInfo {
        v1::SessionInfo {
            tenant: self.address.tenant.as_str().to_string(),
            session: self.address.session.as_str().to_string(),
            status: self.status as i32,
            reason: self.reason as i32,
            epoch: self.epoch,
            worker_id: self
                .worker
                .as_ref()
                .map(|w| w.as_str().to_string())
                .unwrap_or_default(),
            jid: self.jid.clone(),
            metadata: self.metadata.clone(),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }

    /// The lease, if the session is leased.
    pub fn lease(&self) -> Option<Lease> {
        Some(Lease {
            address: self.address.clone(),
            worker: self.worker.clone()?,
            epoch: self.epoch,
            expires_at: self.lease_expires_at?,
        })
    }
}

/// A granted lease: one session, one worker, one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The session.
    pub address: SessionAddress,
    /// The holder.
    pub worker: WorkerId,
    /// The fencing epoch.
    pub epoch: u64,
    /// When it runs out unless renewed. From [`Registry::grant_to_least_loaded`] and
    /// [`Registry::renew_lease`]: the earlier of that and the moment the holder would count
    /// as dead, so the holder never trusts a lease the coordinator may already move.
    pub expires_at: SystemTime,
}

impl Lease {
    /// The bus form.
    pub fn to_grant(&self) -> internal::LeaseGrant {
        internal::LeaseGrant {
            tenant: self.address.tenant.as_str().to_string(),
            session: self.address.session.as_str().to_string(),
            epoch: self.epoch,
            worker_id: self.worker.as_str().to_string(),
            expires_at: Some(timestamp(self.expires_at)),
        }
    }
}

/// A stored command reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    /// The verb of the first command with this id.
    pub verb: String,
    /// Its session.
    pub session: String,
    /// SHA-256 of its decoded payload.
    pub payload_hash: Vec<u8>,
    /// The CommandReply, protobuf-encoded.
    pub reply: Vec<u8>,
}

const SESSION_COLUMNS: &str = "tenant, session, status, reason, desired_running, worker_id, \
     epoch, lease_expires_at, blob_version, blob_epoch, jid, metadata, created_at, updated_at";

/// A heartbeat's held leases as the three arrays an `unnest` joins on: tenants,
/// sessions, epochs.
type HeldColumns<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<i64>);

fn held_columns(held: &[(String, String, u64)]) -> Result<HeldColumns<'_>, RegistryError> {
    let tenants = held.iter().map(|(t, _, _)| t.as_str()).collect();
    let sessions = held.iter().map(|(_, s, _)| s.as_str()).collect();
    let epochs = held
        .iter()
        .map(|(_, _, e)| epoch_to_sql(*e))
        .collect::<Result<Vec<i64>, _>>()?;
    Ok((tenants, sessions, epochs))
}

fn epoch_to_sql(epoch: u64) -> Result<i64, RegistryError> {
    i64::try_from(epoch).map_err(|_| RegistryError::InvalidRow(format!("epoch {epoch} too large")))
}

fn u64_of(row: &Row, column: &str) -> Result<u64, RegistryError> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).map_err(|_| RegistryError::InvalidRow(format!("{column} = {value}")))
}

fn session_from_row(row: &Row) -> Result<SessionRecord, RegistryError> {
    let tenant: String = row.try_get("tenant")?;
    let session: String = row.try_get("session")?;
    let address = SessionAddress::new(&tenant, &session)
        .map_err(|e| RegistryError::InvalidRow(format!("session name: {e}")))?;
    let status: i32 = row.try_get("status")?;
    let status = SessionStatus::try_from(status)
        .map_err(|_| RegistryError::InvalidRow(format!("status {status}")))?;
    let reason: i32 = row.try_get("reason")?;
    let reason = ReasonCode::try_from(reason)
        .map_err(|_| RegistryError::InvalidRow(format!("reason {reason}")))?;
    let worker: Option<String> = row.try_get("worker_id")?;
    let worker = worker
        .map(WorkerId::new)
        .transpose()
        .map_err(|e| RegistryError::InvalidRow(format!("worker name: {e}")))?;
    let metadata: String = row.try_get("metadata")?;
    let metadata = serde_json_metadata(&metadata)?;
    Ok(SessionRecord {
        address,
        status,
        reason,
        desired_running: row.try_get("desired_running")?,
        worker,
        epoch: u64_of(row, "epoch")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        blob_version: u64_of(row, "blob_version")?,
        blob_epoch: u64_of(row, "blob_epoch")?,
        jid: row.try_get("jid")?,
        metadata,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn serde_json_metadata(text: &str) -> Result<BTreeMap<String, String>, RegistryError> {
    serde_json::from_str(text).map_err(|e| RegistryError::InvalidRow(format!("metadata: {e}")))
}

/// Where [`Registry::grant`] may place an unleased session that has a last worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// The last worker when it is live and has room, else the least loaded.
    PreferLast,
    /// The last worker or nobody.
    OnlyLast,
}

/// The `lease_expires_at` a holder may trust, for `RETURNING` in a statement whose `$3`
/// is the worker and whose parameter `dead_after` holds the dead-after seconds: the earlier
/// of the lease's expiry and the moment the worker counts as dead (its last heartbeat +
/// dead-after), since [`Registry::expire_leases`] ends a dead worker's leases before they
/// run out. (`LEAST` ignores the NULL of a worker never seen.)
fn trusted_until(dead_after: &str) -> String {
    format!(
        "LEAST(lease_expires_at, (SELECT w.last_heartbeat + make_interval(secs => {dead_after})
             FROM workers w WHERE w.worker_id = $3)) AS lease_expires_at"
    )
}

fn lease_from_row(address: &SessionAddress, row: &Row) -> Result<Lease, RegistryError> {
    let worker: String = row.try_get("worker_id")?;
    Ok(Lease {
        address: address.clone(),
        worker: WorkerId::new(worker)
            .map_err(|e| RegistryError::InvalidRow(format!("worker name: {e}")))?,
        epoch: u64_of(row, "epoch")?,
        expires_at: row.try_get("lease_expires_at")?,
    })
}

/// Leases listed by a heartbeat as (tenant, session, epoch): (renewed, not held).
pub type HeldRenewal = (Vec<(String, String, u64)>, Vec<(String, String, u64)>);

/// The registry: a connection pool on one database schema.
#[derive(Clone)]
pub struct Registry {
    pool: Pool,
}

impl Registry {
    /// Connects and applies the migrations.
    pub async fn connect(config: &RegistryConfig) -> Result<Registry, RegistryError> {
        let manager = Manager::from_config(
            config.pg_config()?,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        let registry = Registry { pool };
        let mut client = registry.pool.get().await?;
        migrations::apply(&mut client).await?;
        Ok(registry)
    }

    /// Registers a session, STOPPED and not leased.
    pub async fn create_session(
        &self,
        address: &SessionAddress,
        metadata: &BTreeMap<String, String>,
    ) -> Result<SessionRecord, RegistryError> {
        let metadata = serde_json::to_string(metadata)
            .map_err(|e| RegistryError::InvalidRow(format!("metadata: {e}")))?;
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO sessions (tenant, session, status, metadata)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (tenant, session) DO NOTHING
                     RETURNING {SESSION_COLUMNS}"
                ),
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &(SessionStatus::Stopped as i32),
                    &metadata,
                ],
            )
            .await?;
        match row {
            Some(row) => session_from_row(&row),
            None => Err(RegistryError::AlreadyExists(address.clone())),
        }
    }

    /// The session's row.
    pub async fn session(&self, address: &SessionAddress) -> Result<SessionRecord, RegistryError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = $1 AND session = $2"
                ),
                &[&address.tenant.as_str(), &address.session.as_str()],
            )
            .await?;
        match row {
            Some(row) => session_from_row(&row),
            None => Err(RegistryError::UnknownSession(address.clone())),
        }
    }

    /// Removes the session and returns it as it was. Its epoch dies with it; a holder's
    /// later commits are fenced (the session is unknown).
    pub async fn delete_session(
        &self,
        address: &SessionAddress,
    ) -> Result<SessionRecord, RegistryError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "DELETE FROM sessions WHERE tenant = $1 AND session = $2
                     RETURNING {SESSION_COLUMNS}"
                ),
                &[&address.tenant.as_str(), &address.session.as_str()],
            )
            .await?;
        match row {
            Some(row) => session_from_row(&row),
            None => Err(RegistryError::UnknownSession(address.clone())),
        }
    }

    /// Sets what the backend wants (start: running, stop/logout: stopped). Stopping also
    /// ends the lease (the holder is revoked by the caller) and sets STOPPED with `reason`;
    /// starting a STOPPED or FAILED session sets STARTING. Returns the row before and after.
    pub async fn set_desired(
        &self,
        address: &SessionAddress,
        running: bool,
        reason: ReasonCode,
    ) -> Result<(SessionRecord, SessionRecord), RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let before = tx
            .query_opt(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions
                     WHERE tenant = $1 AND session = $2 FOR UPDATE"
                ),
                &[&address.tenant.as_str(), &address.session.as_str()],
            )
            .await?
            .ok_or_else(|| RegistryError::UnknownSession(address.clone()))?;
        let before = session_from_row(&before)?;
        let after = if running {
            tx.query_one(
                &format!(
                    "UPDATE sessions SET desired_running = TRUE,
                         status = CASE WHEN status IN ($3, $4) THEN $5 ELSE status END,
                         reason = CASE WHEN status IN ($3, $4) THEN $6 ELSE reason END,
                         updated_at = now()
                     WHERE tenant = $1 AND session = $2
                     RETURNING {SESSION_COLUMNS}"
                ),
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &(SessionStatus::Stopped as i32),
                    &(SessionStatus::Failed as i32),
                    &(SessionStatus::Starting as i32),
                    &(ReasonCode::Requested as i32),
                ],
            )
            .await?
        } else {
            tx.query_one(
                &format!(
                    "UPDATE sessions SET desired_running = FALSE, status = $3, reason = $4,
                         worker_id = NULL, lease_expires_at = NULL, updated_at = now()
                     WHERE tenant = $1 AND session = $2
                     RETURNING {SESSION_COLUMNS}"
                ),
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &(SessionStatus::Stopped as i32),
                    &(reason as i32),
                ],
            )
            .await?
        };
        let after = session_from_row(&after)?;
        tx.commit().await?;
        Ok((before, after))
    }

    /// Grants the session's lease to `worker` with a new epoch (the old epoch + 1, in the
    /// same `UPDATE … RETURNING`, so concurrent grants get distinct, increasing epochs and
    /// the last one is the only holder).
    pub async fn grant_lease(
        &self,
        address: &SessionAddress,
        worker: &WorkerId,
        ttl: Duration,
    ) -> Result<Lease, RegistryError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "UPDATE sessions SET epoch = epoch + 1, worker_id = $3,
                     lease_expires_at = now() + make_interval(secs => $4),
                     status = CASE WHEN status = $5 THEN $6 ELSE status END,
                     granted_at = now(), last_worker_id = $3, updated_at = now()
                 WHERE tenant = $1 AND session = $2
                 RETURNING worker_id, epoch, lease_expires_at",
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &worker.as_str(),
                    &ttl.as_secs_f64(),
                    &(SessionStatus::Stopped as i32),
                    &(SessionStatus::Starting as i32),
                ],
            )
            .await?;
        match row {
            Some(row) => lease_from_row(address, &row),
            None => Err(RegistryError::UnknownSession(address.clone())),
        }
    }

    /// Grants the session to the live, non-draining worker with the fewest sessions
    /// relative to its capacity (and room left), in one transaction. `from` is the holder
    /// the caller saw (`None`: unleased); it is never picked, and if the session is held by
    /// anyone else by now (a concurrent grant won) nothing changes:
    /// [`RegistryError::AlreadyLeased`]. `None` when no worker can take it. A worker is
    /// live if it heartbeated within `dead_after`.
    ///
    /// Sticky: an unleased session (`from` is `None`) goes back to the last worker that
    /// held it when that worker is live, not draining and has room, whatever the load
    /// elsewhere; a session moved off a draining worker goes to the least loaded.
    pub async fn grant_to_least_loaded(
        &self,
        address: &SessionAddress,
        from: Option<&WorkerId>,
        ttl: Duration,
        dead_after: Duration,
    ) -> Result<Option<Lease>, RegistryError> {
        self.grant(address, from, ttl, dead_after, Placement::PreferLast)
            .await
    }

    /// Like [`Registry::grant_to_least_loaded`] for an unleased session, but a session
    /// with a last worker goes only to that worker: `None` while it is not live. For the
    /// first moments after the coordinator (re)gains NATS, when a worker's silence may be
    /// the coordinator's own outage and not the worker's death: the session waits for its
    /// worker instead of moving to whichever worker heartbeated first.
    pub async fn grant_to_last_worker(
        &self,
        address: &SessionAddress,
        ttl: Duration,
        dead_after: Duration,
    ) -> Result<Option<Lease>, RegistryError> {
        self.grant(address, None, ttl, dead_after, Placement::OnlyLast)
            .await
    }

    async fn grant(
        &self,
        address: &SessionAddress,
        from: Option<&WorkerId>,
        ttl: Duration,
        dead_after: Duration,
        placement: Placement,
    ) -> Result<Option<Lease>, RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Lock the session row first so two grants for it do not both pick.
        let current = tx
            .query_opt(
                "SELECT worker_id, last_worker_id FROM sessions
                 WHERE tenant = $1 AND session = $2 FOR UPDATE",
                &[&address.tenant.as_str(), &address.session.as_str()],
            )
            .await?
            .ok_or_else(|| RegistryError::UnknownSession(address.clone()))?;
        let holder: Option<String> = current.try_get("worker_id")?;
        let last: Option<String> = current.try_get("last_worker_id")?;
        let prefer = if from.is_none() { last } else { None };
        if holder.as_deref() != from.map(WorkerId::as_str) {
            return Err(RegistryError::AlreadyLeased {
                address: address.clone(),
                holder,
            });
        }
        let exclude = from.map(|w| w.as_str().to_string());
        let pick = tx
            .query_opt(
                "SELECT w.worker_id
                 FROM workers w LEFT JOIN sessions s ON s.worker_id = w.worker_id
                 WHERE NOT w.draining
                   AND w.last_heartbeat > now() - make_interval(secs => $1)
                   AND w.capacity > 0
                   AND w.worker_id IS DISTINCT FROM $2
                   AND ($4 IS FALSE OR $3::text IS NULL OR w.worker_id = $3)
                 GROUP BY w.worker_id, w.capacity
                 HAVING count(s.session) < w.capacity
                 ORDER BY COALESCE(w.worker_id = $3, FALSE) DESC,
                     count(s.session)::float8 / w.capacity, w.worker_id
                 LIMIT 1",
                &[
                    &dead_after.as_secs_f64(),
                    &exclude,
                    &prefer,
                    &(placement == Placement::OnlyLast),
                ],
            )
            .await?;
        let Some(pick) = pick else {
            return Ok(None);
        };
        let worker: String = pick.try_get("worker_id")?;
        let row = tx
            .query_one(
                &format!(
                    "UPDATE sessions SET epoch = epoch + 1, worker_id = $3,
                         lease_expires_at = now() + make_interval(secs => $4),
                         status = CASE WHEN status = $5 THEN $6 ELSE status END,
                         granted_at = now(), last_worker_id = $3, updated_at = now()
                     WHERE tenant = $1 AND session = $2
                     RETURNING worker_id, epoch, {}",
                    trusted_until("$7")
                ),
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &worker,
                    &ttl.as_secs_f64(),
                    &(SessionStatus::Stopped as i32),
                    &(SessionStatus::Starting as i32),
                    &dead_after.as_secs_f64(),
                ],
            )
            .await?;
        let lease = lease_from_row(address, &row)?;
        tx.commit().await?;
        Ok(Some(lease))
    }

    /// Extends the lease if `worker` holds it at `epoch`; otherwise [`RegistryError::Fenced`].
    /// The returned expiry is the earlier of the new one and `worker`'s death time.
    pub async fn renew_lease(
        &self,
        address: &SessionAddress,
        worker: &WorkerId,
        epoch: u64,
        ttl: Duration,
        dead_after: Duration,
    ) -> Result<Lease, RegistryError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE sessions SET lease_expires_at = now() + make_interval(secs => $5),
                         updated_at = now()
                     WHERE tenant = $1 AND session = $2 AND worker_id = $3 AND epoch = $4
                     RETURNING worker_id, epoch, {}",
                    trusted_until("$6")
                ),
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &worker.as_str(),
                    &epoch_to_sql(epoch)?,
                    &ttl.as_secs_f64(),
                    &dead_after.as_secs_f64(),
                ],
            )
            .await?;
        match row {
            Some(row) => lease_from_row(address, &row),
            None => Err(self.fenced(address, epoch).await),
        }
    }

    /// Ends the lease if `worker` holds it at `epoch` and returns it; the session keeps its
    /// epoch and, if it should run, is granted again later with a higher one.
    pub async fn release_lease(
        &self,
        address: &SessionAddress,
        worker: &WorkerId,
        epoch: u64,
    ) -> Result<Lease, RegistryError> {
        self.release_lease_as(address, worker, epoch, ReasonCode::Unspecified)
            .await
    }

    /// [`Registry::release_lease`] for a release with `reason`. A release because the
    /// blob store cannot be reached (`BLOB_STORE_UNAVAILABLE`) also backs the session's
    /// next grant off: not before `now() + min(1 s × 2^(n-1), 10 s)`, n counting such
    /// releases in a row (reset when the session reaches WORKING).
    pub async fn release_lease_as(
        &self,
        address: &SessionAddress,
        worker: &WorkerId,
        epoch: u64,
        reason: ReasonCode,
    ) -> Result<Lease, RegistryError> {
        let backoff = reason == ReasonCode::BlobStoreUnavailable;
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "UPDATE sessions s SET worker_id = NULL, lease_expires_at = NULL,
                     blob_unavailable_count = CASE WHEN $5 THEN s.blob_unavailable_count + 1
                         ELSE s.blob_unavailable_count END,
                     retry_after = CASE WHEN $5 THEN now() + make_interval(secs =>
                         LEAST($6 * power(2.0::float8, LEAST(s.blob_unavailable_count, 30)::float8), $7))
                         ELSE s.retry_after END,
                     updated_at = now()
                 FROM (SELECT tenant, session, worker_id, lease_expires_at FROM sessions
                       WHERE tenant = $1 AND session = $2 FOR UPDATE) old
                 WHERE s.tenant = old.tenant AND s.session = old.session
                   AND s.worker_id = $3 AND s.epoch = $4
                 RETURNING old.worker_id, s.epoch, old.lease_expires_at",
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &worker.as_str(),
                    &epoch_to_sql(epoch)?,
                    &backoff,
                    &BLOB_BACKOFF_BASE.as_secs_f64(),
                    &BLOB_BACKOFF_CAP.as_secs_f64(),
                ],
            )
            .await?;
        match row {
            Some(row) => lease_from_row(address, &row),
            None => Err(self.fenced(address, epoch).await),
        }
    }

    /// Records that the holder of the lease at `epoch` wrote blob `version`. Succeeds only
    /// if `epoch` is the session's current epoch and the session is leased (a linearizable
    /// fencing step: a worker that lost its lease gets [`RegistryError::Fenced`]), and
    /// `version` is above the committed one.
    pub async fn commit_blob_version(
        &self,
        address: &SessionAddress,
        epoch: u64,
        version: u64,
    ) -> Result<(), RegistryError> {
        match self.commit_blob(address, None, epoch, version).await {
            Ok(_) => Ok(()),
            // Without a worker to compare, an unleased session at its current epoch is
            // fenced like a stale epoch.
            Err(RegistryError::NotLeased { address, epoch, .. }) => Err(RegistryError::Fenced {
                address,
                epoch,
                current: epoch,
            }),
            Err(e) => Err(e),
        }
    }

    /// [`Registry::commit_blob_version`] for `worker`, as the `blob_commit` request makes
    /// it: also refused with [`RegistryError::NotLeased`] when the epoch is current but the
    /// session is not leased, or not to `worker`. Returns the lease the commit was made
    /// under.
    pub async fn commit_blob_version_for(
        &self,
        address: &SessionAddress,
        worker: &WorkerId,
        epoch: u64,
        version: u64,
    ) -> Result<Lease, RegistryError> {
        self.commit_blob(address, Some(worker), epoch, version)
            .await
    }

    /// One transaction with the row locked: the epoch first (stale → `Fenced`), then the
    /// holder (`NotLeased`), then the version (`StaleBlobVersion`).
    async fn commit_blob(
        &self,
        address: &SessionAddress,
        worker: Option<&WorkerId>,
        epoch: u64,
        version: u64,
    ) -> Result<Lease, RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT worker_id, epoch, lease_expires_at, blob_version FROM sessions
                 WHERE tenant = $1 AND session = $2 FOR UPDATE",
                &[&address.tenant.as_str(), &address.session.as_str()],
            )
            .await?
            .ok_or_else(|| RegistryError::UnknownSession(address.clone()))?;
        let current = u64_of(&row, "epoch")?;
        if current != epoch {
            return Err(RegistryError::Fenced {
                address: address.clone(),
                epoch,
                current,
            });
        }
        let holder: Option<String> = row.try_get("worker_id")?;
        let expires_at: Option<SystemTime> = row.try_get("lease_expires_at")?;
        let holder = holder
            .map(WorkerId::new)
            .transpose()
            .map_err(|e| RegistryError::InvalidRow(format!("worker name: {e}")))?;
        let lease = match (holder, expires_at) {
            (Some(holder), Some(expires_at)) if worker.is_none_or(|w| *w == holder) => Lease {
                address: address.clone(),
                worker: holder,
                epoch,
                expires_at,
            },
            (holder, _) => {
                return Err(RegistryError::NotLeased {
                    address: address.clone(),
                    epoch,
                    holder,
                })
            }
        };
        let committed = u64_of(&row, "blob_version")?;
        let version_sql = match i64::try_from(version) {
            Ok(v) if version > committed => v,
            _ => {
                return Err(RegistryError::StaleBlobVersion {
                    address: address.clone(),
                    version,
                    committed,
                })
            }
        };
        tx.execute(
            "UPDATE sessions SET blob_version = $3, blob_epoch = $4, updated_at = now()
             WHERE tenant = $1 AND session = $2",
            &[
                &address.tenant.as_str(),
                &address.session.as_str(),
                &version_sql,
                &epoch_to_sql(epoch)?,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(lease)
    }

    async fn fenced(&self, address: &SessionAddress, epoch: u64) -> RegistryError {
        match self.session(address).await {
            Ok(record) => RegistryError::Fenced {
                address: address.clone(),
                epoch,
                current: record.epoch,
            },
            Err(e) => e,
        }
    }

    /// Records a heartbeat (or a worker's first appearance).
    pub async fn record_heartbeat(
        &self,
        worker: &WorkerId,
        capacity: u32,
        draining: bool,
        version: &str,
    ) -> Result<(), RegistryError> {
        let capacity = i32::try_from(capacity).unwrap_or(i32::MAX);
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO workers (worker_id, capacity, last_heartbeat, draining, version)
                 VALUES ($1, $2, now(), $3, $4)
                 ON CONFLICT (worker_id) DO UPDATE SET capacity = EXCLUDED.capacity,
                     last_heartbeat = now(),
                     draining = EXCLUDED.draining,
                     version = EXCLUDED.version",
                &[&worker.as_str(), &capacity, &draining, &version],
            )
            .await?;
        Ok(())
    }

    /// Renews the leases a heartbeat lists that `worker` still holds at those epochs, and
    /// returns the listed ones split into those renewed and those it does not hold
    /// (fenced: it must drop them), each in the order listed.
    pub async fn renew_held(
        &self,
        worker: &WorkerId,
        held: &[(String, String, u64)],
        ttl: Duration,
    ) -> Result<HeldRenewal, RegistryError> {
        if held.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let (tenants, sessions, epochs) = held_columns(held)?;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "UPDATE sessions s SET lease_expires_at = now() + make_interval(secs => $2)
                 FROM unnest($3::text[], $4::text[], $5::int8[]) AS h(tenant, session, epoch)
                 WHERE s.tenant = h.tenant AND s.session = h.session AND s.epoch = h.epoch
                   AND s.worker_id = $1
                 RETURNING s.tenant, s.session, s.epoch",
                &[
                    &worker.as_str(),
                    &ttl.as_secs_f64(),
                    &tenants,
                    &sessions,
                    &epochs,
                ],
            )
            .await?;
        let mut renewed = std::collections::HashSet::new();
        for row in &rows {
            let tenant: String = row.try_get("tenant")?;
            let session: String = row.try_get("session")?;
            renewed.insert((tenant, session, u64_of(row, "epoch")?));
        }
        Ok(held.iter().cloned().partition(|h| renewed.contains(h)))
    }

    /// Settles a session its worker gave up on for good (logged out, replaced, banned…):
    /// it no longer should run, gets `status` and `reason`, and is not granted again
    /// until the next start. Does nothing to a session that is leased again already.
    pub async fn settle(
        &self,
        address: &SessionAddress,
        status: SessionStatus,
        reason: ReasonCode,
    ) -> Result<SessionRecord, RegistryError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE sessions SET desired_running = FALSE, status = $3, reason = $4,
                         updated_at = now()
                     WHERE tenant = $1 AND session = $2 AND worker_id IS NULL
                     RETURNING {SESSION_COLUMNS}"
                ),
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &(status as i32),
                    &(reason as i32),
                ],
            )
            .await?;
        match row {
            Some(row) => session_from_row(&row),
            None => self.session(address).await,
        }
    }

    /// Records what the lease holder reported (from its events): the status, its reason,
    /// and the JID once logged in. Applied only if `worker` holds the lease at `epoch`, so
    /// late events of an earlier holder change nothing. Returns whether it applied.
    pub async fn record_status(
        &self,
        address: &SessionAddress,
        worker: &WorkerId,
        epoch: u64,
        status: SessionStatus,
        reason: ReasonCode,
        jid: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let client = self.pool.get().await?;
        let updated = client
            .execute(
                "UPDATE sessions SET status = $5, reason = $6, jid = COALESCE($7, jid),
                     blob_unavailable_count = CASE WHEN $8 THEN 0 ELSE blob_unavailable_count END,
                     retry_after = CASE WHEN $8 THEN NULL ELSE retry_after END,
                     updated_at = now()
                 WHERE tenant = $1 AND session = $2 AND worker_id = $3 AND epoch = $4",
                &[
                    &address.tenant.as_str(),
                    &address.session.as_str(),
                    &worker.as_str(),
                    &epoch_to_sql(epoch)?,
                    &(status as i32),
                    &(reason as i32),
                    &jid,
                    &(status == SessionStatus::Working),
                ],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Marks the worker as draining: it gets no new leases and its sessions are granted
    /// elsewhere.
    pub async fn mark_draining(&self, worker: &WorkerId) -> Result<(), RegistryError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO workers (worker_id, capacity, last_heartbeat, draining)
                 VALUES ($1, 0, now(), TRUE)
                 ON CONFLICT (worker_id) DO UPDATE SET draining = TRUE",
                &[&worker.as_str()],
            )
            .await?;
        Ok(())
    }

    /// Ends the leases of workers silent for longer than `dead_after` and leases that ran
    /// out, forgets the dead workers, and returns the ended leases. The sessions keep
    /// their epochs; the next grant uses a higher one.
    pub async fn expire_leases(&self, dead_after: Duration) -> Result<Vec<Lease>, RegistryError> {
        self.expire_leases_after(dead_after, None).await
    }

    /// [`Registry::expire_leases`], but nothing at all before `horizon` (on the
    /// database's clock): a new leader's bound on the trust its predecessor may have
    /// given (see `leadership`).
    pub async fn expire_leases_after(
        &self,
        dead_after: Duration,
        horizon: Option<SystemTime>,
    ) -> Result<Vec<Lease>, RegistryError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let secs = dead_after.as_secs_f64();
        let due: bool = tx
            .query_one(
                "SELECT $1::timestamptz IS NULL OR now() >= $1::timestamptz",
                &[&horizon],
            )
            .await?
            .try_get(0)?;
        if !due {
            return Ok(Vec::new());
        }
        let rows = tx
            .query(
                "WITH dead AS (
                     SELECT worker_id FROM workers
                     WHERE last_heartbeat <= now() - make_interval(secs => $1)
                 ), ended AS (
                     SELECT tenant, session, worker_id, epoch, lease_expires_at FROM sessions
                     WHERE worker_id IN (SELECT worker_id FROM dead)
                        OR lease_expires_at <= now()
                     FOR UPDATE
                 )
                 UPDATE sessions s SET worker_id = NULL, lease_expires_at = NULL,
                     updated_at = now()
                 FROM ended
                 WHERE s.tenant = ended.tenant AND s.session = ended.session
                 RETURNING ended.tenant, ended.session, ended.worker_id, ended.epoch,
                     ended.lease_expires_at",
                &[&secs],
            )
            .await?;
        tx.execute(
            "DELETE FROM workers WHERE last_heartbeat <= now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await?;
        tx.commit().await?;
        let mut ended = Vec::with_capacity(rows.len());
        for row in rows {
            let tenant: String = row.try_get("tenant")?;
            let session: String = row.try_get("session")?;
            let address = SessionAddress::new(&tenant, &session)
                .map_err(|e| RegistryError::InvalidRow(format!("session name: {e}")))?;
            ended.push(lease_from_row(&address, &row)?);
        }
        Ok(ended)
    }

    /// Reconciliation by heartbeat: `worker` just heartbeated and its heartbeat lists
    /// `held` (tenant, session, epoch). A worker lists a lease until its socket is closed,
    /// so a lease the registry gives it that the list omits is one it holds no socket
    /// for. Returns those granted more than `min_age` ago (younger grants may not have
    /// reached a heartbeat yet); the caller releases them with
    /// [`Registry::release_lease`] (epoch kept, so the release changes nothing if the
    /// lease moved meanwhile) and grants them again, the same worker first
    /// (`last_worker_id`).
    pub async fn unlisted_leases(
        &self,
        worker: &WorkerId,
        held: &[(String, String, u64)],
        min_age: Duration,
    ) -> Result<Vec<Lease>, RegistryError> {
        let (tenants, sessions, epochs) = held_columns(held)?;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT tenant, session, worker_id, epoch, lease_expires_at FROM sessions
                 WHERE worker_id = $1
                   AND COALESCE(granted_at, '-infinity') < now() - make_interval(secs => $2)
                   AND (tenant, session, epoch) NOT IN (
                       SELECT * FROM unnest($3::text[], $4::text[], $5::int8[]))
                 ORDER BY tenant, session",
                &[
                    &worker.as_str(),
                    &min_age.as_secs_f64(),
                    &tenants,
                    &sessions,
                    &epochs,
                ],
            )
            .await?;
        let mut unlisted = Vec::with_capacity(rows.len());
        for row in &rows {
            let [address] = addresses(std::slice::from_ref(row))?
                .try_into()
                .map_err(|_| RegistryError::InvalidRow("address".into()))?;
            unlisted.push(lease_from_row(&address, row)?);
        }
        Ok(unlisted)
    }

    /// Sessions that should run but have no lease, and whose grant is not backed off
    /// (see [`Registry::release_lease_as`]).
    pub async fn unleased_running(&self, limit: i64) -> Result<Vec<SessionAddress>, RegistryError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT tenant, session FROM sessions
                 WHERE desired_running AND worker_id IS NULL
                   AND (retry_after IS NULL OR retry_after <= now())
                 ORDER BY updated_at LIMIT $1",
                &[&limit],
            )
            .await?;
        addresses(&rows)
    }

    /// Leases held by draining workers, to be granted elsewhere.
    pub async fn leases_on_draining(&self, limit: i64) -> Result<Vec<Lease>, RegistryError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT s.tenant, s.session, s.worker_id, s.epoch, s.lease_expires_at
                 FROM sessions s JOIN workers w ON w.worker_id = s.worker_id
                 WHERE w.draining ORDER BY s.updated_at LIMIT $1",
                &[&limit],
            )
            .await?;
        let mut leases = Vec::with_capacity(rows.len());
        for row in &rows {
            let [address] = addresses(std::slice::from_ref(row))?
                .try_into()
                .map_err(|_| RegistryError::InvalidRow("address".into()))?;
            leases.push(lease_from_row(&address, row)?);
        }
        Ok(leases)
    }

    /// The stored reply under (tenant, command_id), if any.
    pub async fn stored_reply(
        &self,
        tenant: &str,
        command_id: &str,
    ) -> Result<Option<StoredReply>, RegistryError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT verb, session, payload_hash, reply FROM command_replies
                 WHERE tenant = $1 AND command_id = $2",
                &[&tenant, &command_id],
            )
            .await?;
        row.map(|row| {
            Ok(StoredReply {
                verb: row.try_get("verb")?,
                session: row.try_get("session")?,
                payload_hash: row.try_get("payload_hash")?,
                reply: row.try_get("reply")?,
            })
        })
        .transpose()
    }

    /// Stores a reply under (tenant, command_id) unless one is stored already; returns the
    /// reply that is stored afterwards (the earlier one if there was one).
    pub async fn store_reply(
        &self,
        tenant: &str,
        command_id: &str,
        reply: &StoredReply,
    ) -> Result<StoredReply, RegistryError> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO command_replies (tenant, command_id, verb, session, payload_hash, reply)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (tenant, command_id) DO NOTHING",
                &[
                    &tenant,
                    &command_id,
                    &reply.verb,
                    &reply.session,
                    &reply.payload_hash,
                    &reply.reply,
                ],
            )
            .await?;
        drop(client);
        if inserted == 1 {
            return Ok(reply.clone());
        }
        self.stored_reply(tenant, command_id)
            .await?
            .ok_or_else(|| RegistryError::InvalidRow("stored reply vanished".into()))
    }

    /// Forgets replies older than `keep` (at least 24 h by the contract).
    pub async fn prune_replies(&self, keep: Duration) -> Result<u64, RegistryError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM command_replies WHERE created_at < now() - make_interval(secs => $1)",
                &[&keep.as_secs_f64()],
            )
            .await?)
    }
}

fn addresses(rows: &[Row]) -> Result<Vec<SessionAddress>, RegistryError> {
    rows.iter()
        .map(|row| {
            let tenant: String = row.try_get("tenant")?;
            let session: String = row.try_get("session")?;
            SessionAddress::new(&tenant, &session)
                .map_err(|e| RegistryError::InvalidRow(format!("session name: {e}")))
        })
        .collect()
}
