//! The wafleet auth-coordinator: keeps the session registry in PostgreSQL and grants
//! session leases to session workers over NATS, each with a fencing epoch that only grows.
//!
//! - [`registry`]: the registry's tables and operations, each one SQL transaction;
//!   [`registry::Registry::commit_blob_version`] is the fencing step workers call.
//! - [`leadership`]: one coordinator leads, by a PostgreSQL session-level advisory lock.
//! - [`service`]: the leader's NATS side: commands, heartbeats, lease grants and moves,
//!   blob commits (`blob_commit`), and the purge of a deleted session's blob.
//! - [`cli`]: the command line (`wafleet-coordinator`, `wafleet coordinator`).
//!
//! `docs/ARCHITECTURE.md` ("Lease protocol") describes the protocol; `docs/BUS.md` the
//! messages.

pub mod cli;
pub mod leadership;
pub mod migrations;
pub mod registry;
pub mod service;

pub use leadership::{Leadership, LeadershipError};
pub use registry::{Lease, Registry, RegistryConfig, RegistryError, SessionRecord};
pub use service::{Coordinator, CoordinatorConfig, ServiceError};
