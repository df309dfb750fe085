//! Runs wafleet sessions: the tokio glue around the sans-IO protocol crate.
//!
//! - [`driver`]: one session over a WebSocket: Noise, the linking/login state machine,
//!   timers on the wall clock, reconnects with backoff, persistence before acting, and
//!   [`DriverEvent`]s for the caller; [`DriverControl`] commands a running driver
//!   (pairing code, logout, send a text). Messages go through a `wafleet_messaging`
//!   messenger; inbound ones reach an [`InboundSink`] before they are acked.
//! - [`store`]: where a session's identity, prekeys and Signal state live
//!   ([`SessionStore`]), with the local filesystem implementation ([`FsSessionStore`]).
//! - [`recipient`]: the recipient of a sent message, parsed ([`Recipient`]).
//! - [`qr`]: the linking QR as terminal half-blocks, PNG bytes or a `data:` URL.
//! - [`backoff`]: jittered exponential reconnect delays.
//!
//! - [`fleet`]: the fleet worker: leases from the coordinator, encrypted blobs in S3 or a
//!   directory, bus events and commands, metrics, drain on shutdown.

pub mod backoff;
pub mod driver;
pub mod event;
pub mod fleet;
pub mod journal;
pub mod qr;
pub mod recipient;
pub mod store;

pub use backoff::Backoff;
pub use driver::{
    ControlError, DriverConfig, DriverControl, DriverError, DriverExit, Inbound, InboundSink,
    PairingCodeIssued, SentMessage, ServerConfig, SessionDriver, SinkError, LOGOUT_TIMEOUT,
    SEND_TIMEOUT,
};
pub use event::{
    DriverEvent, MessageEvent, ReceiptEvent, Secret, SentEvent, SkippedDevice, UndecryptableEvent,
};
pub use recipient::{InvalidRecipient, Recipient};
pub use store::{FsSessionStore, SessionName, SessionStore, StoreError, StoreStats, StoredSession};
