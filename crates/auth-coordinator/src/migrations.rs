//! The registry's schema, as SQL embedded in the binary and applied at start.
//!
//! Each migration runs once, in its own transaction, and is recorded in
//! `schema_migrations`. A transaction-level advisory lock (keyed on the current schema)
//! serialises coordinators that start at the same moment, so the second one finds the
//! migrations applied and does nothing.

use tokio_postgres::Client;

/// The migrations in order: (version, SQL).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE sessions (
    tenant            TEXT        NOT NULL,
    session           TEXT        NOT NULL,
    -- wafleet.bus.v1.SessionStatus and ReasonCode values.
    status            INTEGER     NOT NULL,
    reason            INTEGER     NOT NULL DEFAULT 0,
    -- What the backend asked for: true after start, false after stop/logout.
    desired_running   BOOLEAN     NOT NULL DEFAULT FALSE,
    worker_id         TEXT,
    -- The fencing epoch: +1 with every grant, never reused.
    epoch             BIGINT      NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    lease_expires_at  TIMESTAMPTZ,
    -- The last blob version a lease holder committed, and the epoch it committed at.
    blob_version      BIGINT      NOT NULL DEFAULT 0,
    blob_epoch        BIGINT      NOT NULL DEFAULT 0,
    jid               TEXT        NOT NULL DEFAULT '',
    -- The create command's metadata, JSON-encoded.
    metadata          TEXT        NOT NULL DEFAULT '{}',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, session)
);
CREATE INDEX sessions_worker ON sessions (worker_id) WHERE worker_id IS NOT NULL;

CREATE TABLE workers (
    worker_id       TEXT        PRIMARY KEY,
    capacity        INTEGER     NOT NULL CHECK (capacity >= 0),
    last_heartbeat  TIMESTAMPTZ NOT NULL,
    draining        BOOLEAN     NOT NULL DEFAULT FALSE,
    version         TEXT        NOT NULL DEFAULT ''
);

CREATE TABLE command_replies (
    tenant        TEXT        NOT NULL,
    command_id    TEXT        NOT NULL,
    verb          TEXT        NOT NULL,
    session       TEXT        NOT NULL,
    -- SHA-256 of the decoded command's protobuf encoding.
    payload_hash  BYTEA       NOT NULL,
    -- The CommandReply, protobuf-encoded.
    reply         BYTEA       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, command_id)
);
CREATE INDEX command_replies_created ON command_replies (created_at);
"#,
    ),
    (
        2,
        r#"
-- When the current lease was granted (reconciliation by heartbeat leaves young grants
-- alone), the last worker that held the session (a new grant prefers it), and the grant
-- backoff after releases for an unreachable blob store.
ALTER TABLE sessions
    ADD COLUMN granted_at             TIMESTAMPTZ,
    ADD COLUMN last_worker_id         TEXT,
    ADD COLUMN blob_unavailable_count INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN retry_after            TIMESTAMPTZ;

-- The leader's horizon: who leads and when its leadership was last confirmed (NULL
-- holder after a clean step-down). A new leader does not end silent workers' leases
-- before the previous holder's heartbeat acknowledgements have surely run out.
CREATE TABLE coordinator_leader (
    id            INTEGER     PRIMARY KEY CHECK (id = 1),
    holder        TEXT,
    confirmed_at  TIMESTAMPTZ
);
INSERT INTO coordinator_leader (id) VALUES (1);
"#,
    ),
];

/// Applies the migrations that are not applied yet.
pub async fn apply(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('wafleet-migrate:' || current_schema()))",
            &[],
        )
        .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    BIGINT      PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !applied {
            tracing::info!(version, "applying registry migration");
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}
