//! The companion side of device linking and login, as a sans-IO state machine
//! (protocol-notes §2.4, §4, §5, §6).
//!
//! - [`DeviceIdentity`]: what a device persists (keys, registration id, ADV secret, account).
//! - [`ClientProfile`]: the `ClientPayload` for the Noise client finish (registration or
//!   login).
//! - [`Session`]: one connection after the handshake. Decoded server nodes and timeouts go
//!   in; nodes to send ([`Session::poll_transmit`]) and [`Event`]s come out. Times are unix
//!   milliseconds passed by the caller; randomness is passed in.
//!
//! A typical connection: build the [`Session`], send
//! [`Session::client_payload`] in `noise::ClientConnection::finish_handshake`, then loop:
//! decode frames into nodes → [`Session::handle_node`]; at [`Session::poll_timeout`] →
//! [`Session::handle_timeout`]; drain [`Session::poll_transmit`] (encode, encrypt, send) and
//! [`Session::poll_event`]. On [`Event::Restart`] reconnect at once; on
//! [`Event::Disconnected`] reconnect only if [`DisconnectReason::should_reconnect`].
//!
//! A logged-in session logs out with [`Session::logout`] (`remove-companion-device`); the
//! server's answer comes back as [`Event::LoggedOut`] or [`Event::LogoutFailed`].

pub mod identity;
pub mod pairing;
pub mod payload;
pub mod prekeys;
pub mod session;
pub mod stream_error;

pub use identity::{DeviceIdentity, PreKey, SignedPreKey};
pub use pairing::PairingCodeError;
pub use payload::{Browser, ClientProfile, PayloadError, WaVersion};
pub use session::{Event, SecretText, Session, SessionConfig, SessionError};
pub use stream_error::{DisconnectReason, StreamErrorKind};
