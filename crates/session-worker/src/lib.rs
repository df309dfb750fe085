//! Runs wafleet sessions: the tokio glue around the sans-IO protocol crate.
//!
//! - [`driver`]: one session over a WebSocket: Noise, the linking/login state machine,
//!   timers on the wall clock, reconnects with backoff, persistence before acting, and
//!   [`DriverEvent`]s for the caller; [`DriverControl`] commands a running driver
//!   (pairing code, logout).
//! - [`store`]: where a session's identity and prekeys live ([`SessionStore`]), with the
//!   local filesystem implementation ([`FsSessionStore`]).
//! - [`qr`]: the linking QR as terminal half-blocks, PNG bytes or a `data:` URL.
//! - [`backoff`]: jittered exponential reconnect delays.
//!
//! - [`fleet`]: the fleet worker: leases from the coordinator, encrypted blobs in S3 or a
//!   directory, bus events and commands, metrics, drain on shutdown.

pub mod backoff;
pub mod driver;
pub mod event;
pub mod fleet;
pub mod qr;
pub mod store;

pub use backoff::Backoff;
pub use driver::{
    ControlError, DriverConfig, DriverControl, DriverError, DriverExit, PairingCodeIssued,
    ServerConfig, SessionDriver, LOGOUT_TIMEOUT,
};
pub use event::{DriverEvent, Secret};
pub use store::{FsSessionStore, SessionName, SessionStore, StoreError, StoredSession};
