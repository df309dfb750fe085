//! Leader election: several coordinators may run, exactly one leads.
//!
//! The leader holds a PostgreSQL session-level advisory lock (`pg_try_advisory_lock`, key
//! `hashtext('wafleet-leader:' || current_schema())`) on a dedicated connection, outside
//! the pool. PostgreSQL frees the lock when that connection ends, so a leader that crashes
//! or loses its database connection stops leading, and a follower, which retries every
//! `retry` interval, takes over. The leader checks its connection every `retry` interval
//! too and steps down (tells its service to stop) as soon as the check fails.

use std::time::Duration;

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
    /// This coordinator leads; the lock lives in the backend with this pid.
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

/// A running election. Dropping it without [`Leadership::stop`] aborts the task, and the
/// lock goes when its connection closes.
pub struct Leadership {
    role: watch::Receiver<Role>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Leadership {
    /// Starts campaigning with `config` (the registry's, so the same schema), retrying
    /// every `retry`.
    pub fn start(config: tokio_postgres::Config, retry: Duration) -> Leadership {
        let (role_tx, role) = watch::channel(Role::Follower);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(campaign(config, retry, role_tx, stop_rx));
        Leadership {
            role,
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

    /// Steps down: unlocks, closes the connection and ends the task.
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

async fn campaign(
    config: tokio_postgres::Config,
    retry: Duration,
    role: watch::Sender<Role>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                let mut connection = tokio::spawn(connection);
                let outcome = hold(&client, &mut connection, retry, &role, &mut stop).await;
                role.send_replace(Role::Follower);
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "leader election connection failed");
                }
                if *stop.borrow() {
                    // Unlock explicitly; closing the connection would free it as well.
                    let _ = client
                        .execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY_SQL})"), &[])
                        .await;
                    drop(client);
                    let _ = connection.await;
                    return;
                }
                drop(client);
                connection.abort();
            }
            Err(e) => tracing::warn!(error = %e, "leader election cannot connect"),
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
    retry: Duration,
    role: &watch::Sender<Role>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), tokio_postgres::Error> {
    let backend_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .try_get(0)?;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let leading = role.borrow().is_leader();
        // A follower tries the lock; the leader checks that its connection still answers
        // (a session lock lives exactly as long as the connection).
        let sql = if leading {
            "SELECT TRUE".to_string()
        } else {
            format!("SELECT pg_try_advisory_lock({LOCK_KEY_SQL})")
        };
        let check = tokio::time::timeout(check_timeout(retry), client.query_one(&sql, &[])).await;
        let locked: bool = match check {
            Ok(row) => row?.try_get(0)?,
            Err(_) => {
                tracing::warn!("leader election check timed out");
                return Ok(());
            }
        };
        if locked && !leading {
            tracing::info!(backend_pid, "leading");
            role.send_replace(Role::Leader { backend_pid });
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
